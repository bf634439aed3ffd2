//! [`Generation`]: the keyspaces holding one generation of a table's data, and how their names
//! are made and found. A snapshot install writes a new generation beside the current one and
//! switches to it; leftovers of an interrupted install are found by name and dropped.

use crate::create_cache::{CREATE_CACHE_BYTES, CreateRevisions};
use crate::error::Result;
use armada_storage::fjall::Keyspace;
use armada_storage::{Storage, TableId, keyspace_name};

/// The keyspaces of one generation of a table's data.
pub(crate) struct Generation {
    pub number: u64,
    pub latest: Keyspace,
    pub history: Keyspace,
    /// Create revisions of recently written keys of `latest` (see `create_cache.rs`).
    pub create_revisions: CreateRevisions,
}

pub(crate) fn owner(id: TableId) -> String {
    format!("t{id}")
}

fn generation_role(number: u64, part: &str) -> String {
    format!("g{number}.{part}")
}

/// The generation number of a keyspace of table `id`, `None` for its meta keyspace.
/// Names of other tables give `Err(())`.
pub(crate) fn parse_keyspace_name(id: TableId, name: &str) -> Result<Option<u64>, ()> {
    let prefix = keyspace_name(&owner(id), "");
    let role = name.strip_prefix(&prefix).ok_or(())?;
    if role == "meta" {
        return Ok(None);
    }
    let (number, part) = role
        .strip_prefix('g')
        .and_then(|rest| rest.split_once('.'))
        .ok_or(())?;
    match part {
        "latest" | "history" => number.parse().map(Some).map_err(|_| ()),
        _ => Err(()),
    }
}

pub(crate) fn open_generation(storage: &Storage, id: TableId, number: u64) -> Result<Generation> {
    let owner = owner(id);
    Ok(Generation {
        number,
        latest: storage.keyspace(&keyspace_name(&owner, &generation_role(number, "latest")))?,
        history: storage.keyspace(&keyspace_name(&owner, &generation_role(number, "history")))?,
        create_revisions: CreateRevisions::new(CREATE_CACHE_BYTES),
    })
}

/// Deletes a generation's keyspaces (open handles keep reading what they saw until dropped).
pub(crate) fn drop_generation(storage: &Storage, generation: &Generation) -> Result<()> {
    let database = storage.database();
    database.delete_keyspace(generation.latest.clone())?;
    database.delete_keyspace(generation.history.clone())?;
    Ok(())
}

/// Generation numbers of every keyspace of table `id` that exists.
pub(crate) fn generation_numbers(storage: &Storage, id: TableId) -> impl Iterator<Item = u64> {
    storage
        .database()
        .list_keyspace_names()
        .iter()
        .filter_map(|name| parse_keyspace_name(id, name).ok().flatten())
        .collect::<Vec<_>>()
        .into_iter()
}

/// Deletes the keyspaces of table `id` whose generation (`None` = meta) matches `select`.
pub(crate) fn delete_keyspaces(
    storage: &Storage,
    id: TableId,
    select: impl Fn(Option<u64>) -> bool,
) -> Result<()> {
    let database = storage.database();
    let mut names: Vec<String> = database
        .list_keyspace_names()
        .iter()
        .map(|name| name.to_string())
        .filter(|name| parse_keyspace_name(id, name).is_ok_and(&select))
        .collect();
    names.sort();
    for name in names {
        let handle = storage.keyspace(&name)?;
        database.delete_keyspace(handle)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyspace_names_parse_only_for_their_table() {
        let id = TableId(1);
        assert_eq!(parse_keyspace_name(id, "t1.meta"), Ok(None));
        assert_eq!(parse_keyspace_name(id, "t1.g3.latest"), Ok(Some(3)));
        assert_eq!(parse_keyspace_name(id, "t1.g0.history"), Ok(Some(0)));
        assert!(parse_keyspace_name(id, "t10.meta").is_err());
        assert!(parse_keyspace_name(id, "t1.gx.latest").is_err());
        assert!(parse_keyspace_name(id, "t1.g1.other").is_err());
        assert!(parse_keyspace_name(id, "raft.log").is_err());
    }
}
