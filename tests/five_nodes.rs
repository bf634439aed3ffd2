//! A 5-node leader cluster survives two failures: kill -9 the table's Raft leader and one more
//! node under a continuous write load; writes and linearizable reads continue through the three
//! left, no acknowledged write is lost, and after both restart all five replicas converge.
#![allow(clippy::too_many_lines)] // scenarios read top to bottom; the 70-line rule is for production code

mod common;
mod workload;

use std::time::{Duration, Instant};

use common::Cluster;
use workload::{
    Writer, agreed_leader, assert_all_present, converge, eventually, read_all, read_key,
};

const TABLE: &str = "five";

#[tokio::test(flavor = "multi_thread")]
async fn five_nodes_survive_two_failures_including_the_raft_leader() {
    let mut cluster = Cluster::start(5, &[]);
    cluster.node(1).create_table(TABLE).await;
    let apis: Vec<String> = cluster.nodes.iter().map(|node| node.api.clone()).collect();
    let (raft_leader, term) =
        agreed_leader(&apis, TABLE, Duration::from_secs(30), |leader| leader != 0).await;

    // The victims: the table's Raft leader and the next node; the writer uses the other three.
    let second_victim = raft_leader % 5 + 1;
    let victims = [raft_leader, second_victim];
    let survivors: Vec<u64> = (1..=5).filter(|id| !victims.contains(id)).collect();
    let survivor_apis: Vec<String> = survivors
        .iter()
        .map(|id| cluster.node(*id).api.clone())
        .collect();
    let started = Instant::now();
    let writer = Writer::start(TABLE, "w", survivor_apis.clone());
    writer
        .wait_acks_after(started, 20, Duration::from_secs(30))
        .await;

    for victim in victims {
        cluster.node_mut(victim).kill9();
    }
    let killed_at = Instant::now();

    // The three left elect a leader among themselves and keep acknowledging writes.
    let (new_leader, new_term) =
        agreed_leader(&survivor_apis, TABLE, Duration::from_secs(30), |leader| {
            survivors.contains(&leader)
        })
        .await;
    assert!(new_term > term, "a new term after the leader's death");
    writer
        .wait_acks_after(killed_at, 50, Duration::from_secs(30))
        .await;

    // Linearizable reads on each survivor see a write acknowledged after the failures.
    let after_kill = writer
        .acks()
        .into_iter()
        .find(|ack| ack.sent_at >= killed_at)
        .expect("a write acknowledged after the kill");
    for api in &survivor_apis {
        // A read that fails (e.g. while a forward finds the new leader) is simply retried.
        let revision = eventually(Duration::from_secs(15), "a linearizable read", || async {
            read_key(api, TABLE, &after_kill.key, true).await.ok()
        })
        .await;
        assert_eq!(revision, Some(after_kill.revision), "read on {api}");
    }
    eprintln!(
        "killed nodes {victims:?} (Raft leader {raft_leader}, term {term}); node {new_leader} \
         leads in term {new_term}"
    );

    // Both come back and catch up; the writer keeps going meanwhile.
    for victim in victims {
        cluster.node_mut(victim).restart();
    }
    let restarted_at = Instant::now();
    writer
        .wait_acks_after(restarted_at, 20, Duration::from_secs(30))
        .await;
    let acks = writer.stop().await;
    // Restarted nodes bound new API ports.
    let apis: Vec<String> = cluster.nodes.iter().map(|node| node.api.clone()).collect();

    let (applied, _) = converge(&apis, TABLE, Duration::from_secs(60)).await;
    let last_revision = acks.iter().map(|ack| ack.revision).max().expect("acks");
    assert!(applied as i64 >= last_revision);
    for api in &apis {
        // Identical hashes at the same applied index; the data itself, checked on every node.
        let present = read_all(api, TABLE, false)
            .await
            .unwrap_or_else(|status| panic!("range on {api}: {status}"));
        assert_all_present(&acks, &present);
    }
    let present = read_all(&apis[survivors[0] as usize - 1], TABLE, true)
        .await
        .expect("linearizable range");
    assert_all_present(&acks, &present);
    eprintln!(
        "{} writes acknowledged, all present on all 5 nodes at applied index {applied}",
        acks.len()
    );
}
