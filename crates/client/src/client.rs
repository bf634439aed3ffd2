//! [`Client`]: one channel to one server, the Regatta services over it (KV, Tables, Cluster,
//! Maintenance), and a typed method per RPC returning the proto response.

use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use armada_proto::maintenance::v1::maintenance_client::MaintenanceClient;
use armada_proto::maintenance::v1::{
    BackupRequest, ResetRequest, RestoreInfo, RestoreMessage, restore_message,
};
use armada_proto::regatta::v1::{
    CreateTableRequest, CreateTableResponse, DeleteTableRequest, DeleteTableResponse,
    ListTablesRequest, ListTablesResponse,
};
use armada_proto::regatta::v1::{
    DeleteRangeRequest, DeleteRangeResponse, MemberListRequest, MemberListResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, StatusRequest, StatusResponse, TxnRequest,
    TxnResponse, cluster_client::ClusterClient, kv_client::KvClient, tables_client::TablesClient,
};
use armada_proto::replication::v1::SnapshotChunk;
use futures::{Stream, StreamExt, TryStreamExt};
use prost::bytes::Bytes;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::ClientError;
use crate::address::{Target, parse_address};
use crate::error::error_chain;

/// Largest message the client sends or accepts: above the server's 4 MiB transport limit, so
/// the server's limit is the one that is exercised.
pub const MAX_MESSAGE_BYTES: usize = 8 * 1024 * 1024;

/// How long dialing may take when [`ConnectOptions::connect_timeout`] is not set.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How to reach a server beyond its address.
#[derive(Debug, Clone, Default)]
pub struct ConnectOptions {
    /// PEM file of the CA that signed the server's certificate (TLS addresses only); without
    /// it the system's roots are used.
    pub ca_file: Option<PathBuf>,
    /// Client certificate presented to servers that require one (mutual TLS; TLS addresses
    /// only).
    pub identity: Option<ClientIdentity>,
    /// The name the server's certificate must be valid for (also sent as SNI), instead of the
    /// address's host (`localhost` for `unixs://`). TLS addresses only.
    pub server_name: Option<String>,
    /// Bearer token sent as `authorization: Bearer <token>` on every call.
    pub token: Option<String>,
    /// Deadline of each call (sent to the server as `grpc-timeout`); none by default.
    pub timeout: Option<Duration>,
    /// How long dialing may take; [`DEFAULT_CONNECT_TIMEOUT`] when `None`.
    pub connect_timeout: Option<Duration>,
}

/// A client certificate chain and its private key, PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIdentity {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// Adds the bearer token and the deadline to every call.
#[derive(Clone, Default)]
pub struct CallDecorator {
    authorization: Option<MetadataValue<Ascii>>,
    timeout: Option<Duration>,
}

impl CallDecorator {
    /// A decorator for `options`; fails if the token is not a valid header value.
    pub fn new(options: &ConnectOptions) -> Result<Self, ClientError> {
        let authorization = match options.token.as_deref().filter(|token| !token.is_empty()) {
            None => None,
            Some(token) => {
                let mut value: MetadataValue<Ascii> =
                    format!("Bearer {token}")
                        .parse()
                        .map_err(|_| ClientError::InvalidToken {
                            reason: "it must be printable ASCII".to_owned(),
                        })?;
                value.set_sensitive(true);
                Some(value)
            }
        };
        Ok(CallDecorator {
            authorization,
            timeout: options.timeout,
        })
    }
}

impl std::fmt::Debug for CallDecorator {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the token.
        formatter
            .debug_struct("CallDecorator")
            .field(
                "authorization",
                &self.authorization.as_ref().map(|_| "**********"),
            )
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl Interceptor for CallDecorator {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(authorization) = &self.authorization {
            request
                .metadata_mut()
                .insert("authorization", authorization.clone());
        }
        if let Some(timeout) = self.timeout {
            request.set_timeout(timeout);
        }
        Ok(request)
    }
}

/// The channel type of the raw tonic clients: a connection plus the [`CallDecorator`].
pub type ApiChannel = InterceptedService<Channel, CallDecorator>;

/// A stream of `IterateRange` chunks.
pub type RangeStream =
    Pin<Box<dyn Stream<Item = Result<RangeResponse, ClientError>> + Send + 'static>>;

/// A stream of bytes received from the server (e.g. a backup's chunks).
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, ClientError>> + Send + 'static>>;

/// An open `Maintenance.Backup` stream.
pub struct Backup {
    /// The table revision the dump observed (Armada servers send it; Regatta servers do not).
    pub revision: Option<u64>,
    /// The dump's bytes in order; chunk boundaries carry no meaning.
    pub chunks: ByteStream,
}

/// Response header in which an Armada server reports the revision of a backup or restore.
pub const REVISION_HEADER: &str = "armada-revision";

fn revision_header(metadata: &tonic::metadata::MetadataMap) -> Option<u64> {
    metadata
        .get(REVISION_HEADER)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse().ok())
}

/// Dials `address` and returns the bare channel (e.g. to build an etcd client on it). The
/// token of `options` is not applied here: only [`Client`] adds it.
pub async fn connect_channel(
    address: &str,
    options: &ConnectOptions,
) -> Result<Channel, ClientError> {
    dialer(address, options)?
        .connect()
        .await
        .map_err(|error| ClientError::Connect {
            address: address.to_owned(),
            detail: error_chain(&error),
        })
}

/// A channel to `address` that dials on first use and re-dials after failures.
/// HTTP/2 keepalive pings detect a dead link (a partition drops packets silently).
pub fn lazy_channel(address: &str, options: &ConnectOptions) -> Result<Channel, ClientError> {
    let mut dialer = dialer(address, options)?;
    dialer.endpoint = dialer
        .endpoint
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true);
    Ok(dialer.connect_lazy())
}

/// An endpoint, and the Unix socket to reach it through when tonic cannot dial it itself
/// (TLS over a Unix socket).
struct Dialer {
    endpoint: Endpoint,
    unix_socket: Option<PathBuf>,
}

impl Dialer {
    async fn connect(&self) -> Result<Channel, tonic::transport::Error> {
        match &self.unix_socket {
            None => self.endpoint.connect().await,
            Some(path) => {
                self.endpoint
                    .connect_with_connector(UnixSocketConnector::new(path))
                    .await
            }
        }
    }

    fn connect_lazy(&self) -> Channel {
        match &self.unix_socket {
            None => self.endpoint.connect_lazy(),
            Some(path) => self
                .endpoint
                .connect_with_connector_lazy(UnixSocketConnector::new(path)),
        }
    }
}

fn dialer(address: &str, options: &ConnectOptions) -> Result<Dialer, ClientError> {
    let target = parse_address(address)?;
    let invalid = |reason: String| ClientError::InvalidAddress {
        address: address.to_owned(),
        reason,
    };
    let mut endpoint = Endpoint::from_shared(target.uri().to_owned())
        .map_err(|error| invalid(error_chain(&error)))?
        .connect_timeout(options.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT))
        .tcp_nodelay(true);
    if let Some(timeout) = options.timeout {
        endpoint = endpoint.timeout(timeout);
    }
    if target.is_tls() {
        endpoint =
            endpoint
                .tls_config(tls_config(options)?)
                .map_err(|error| ClientError::Connect {
                    address: address.to_owned(),
                    detail: error_chain(&error),
                })?;
    } else {
        let tls_option = [
            (options.ca_file.is_some(), "a CA file"),
            (options.identity.is_some(), "a client certificate"),
            (options.server_name.is_some(), "a TLS server name"),
        ]
        .into_iter()
        .find_map(|(given, what)| given.then_some(what));
        if let Some(what) = tls_option {
            return Err(invalid(format!(
                "{what} was given but the address is not https:// or unixs://"
            )));
        }
    }
    let unix_socket = match target {
        Target::UnixTls { path } => Some(PathBuf::from(path)),
        _ => None,
    };
    Ok(Dialer {
        endpoint,
        unix_socket,
    })
}

/// The TLS settings of `options`: the CA (else the system's roots), the client certificate,
/// the server name.
fn tls_config(options: &ConnectOptions) -> Result<ClientTlsConfig, ClientError> {
    let mut tls = match &options.ca_file {
        Some(path) => {
            let pem = std::fs::read(path).map_err(|source| ClientError::CaFile {
                path: path.clone(),
                source,
            })?;
            ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem))
        }
        None => ClientTlsConfig::new().with_native_roots(),
    };
    if let Some(identity) = &options.identity {
        let read = |path: &PathBuf| {
            std::fs::read(path).map_err(|source| ClientError::CertificateFile {
                path: path.clone(),
                source,
            })
        };
        let certificate = read(&identity.cert_file)?;
        let key = read(&identity.key_file)?;
        tls = tls.identity(Identity::from_pem(certificate, key));
    }
    if let Some(name) = &options.server_name {
        tls = tls.domain_name(name.clone());
    }
    Ok(tls)
}

/// Dials a Unix socket for tonic, which then runs TLS over it (the endpoint's `https://`).
#[derive(Clone)]
struct UnixSocketConnector {
    path: std::sync::Arc<PathBuf>,
}

impl UnixSocketConnector {
    fn new(path: &std::path::Path) -> UnixSocketConnector {
        UnixSocketConnector {
            path: std::sync::Arc::new(path.to_path_buf()),
        }
    }
}

impl tower_service::Service<tonic::codegen::http::Uri> for UnixSocketConnector {
    type Response = hyper_util::rt::TokioIo<tokio::net::UnixStream>;
    type Error = std::io::Error;
    type Future =
        Pin<Box<dyn std::future::Future<Output = std::io::Result<Self::Response>> + Send>>;

    fn poll_ready(
        &mut self,
        _context: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: tonic::codegen::http::Uri) -> Self::Future {
        let path = self.path.clone();
        Box::pin(async move {
            let stream = tokio::net::UnixStream::connect(path.as_path()).await?;
            Ok(hyper_util::rt::TokioIo::new(stream))
        })
    }
}

/// A connection to one Armada (or Regatta) server.
///
/// Cloning is cheap and shares the connection. Methods take `&self`; each call clones the
/// underlying tonic client (a handle), so a `Client` can be shared across tasks.
#[derive(Debug, Clone)]
pub struct Client {
    kv: KvClient<ApiChannel>,
    tables: TablesClient<ApiChannel>,
    cluster: ClusterClient<ApiChannel>,
    maintenance: MaintenanceClient<ApiChannel>,
}

impl Client {
    /// Dials `address` with default options (plaintext or system TLS roots, no token, no
    /// deadline).
    pub async fn connect(address: &str) -> Result<Client, ClientError> {
        Client::connect_with(address, &ConnectOptions::default()).await
    }

    /// Dials `address` with `options`; fails if the server cannot be reached.
    pub async fn connect_with(
        address: &str,
        options: &ConnectOptions,
    ) -> Result<Client, ClientError> {
        let decorator = CallDecorator::new(options)?;
        let channel = connect_channel(address, options).await?;
        Ok(Client::from_channel(channel, decorator))
    }

    /// Like [`Client::connect_with`], but dials on first use (and redials after failures):
    /// for long-lived clients such as follower forwarding.
    pub fn connect_lazy(address: &str, options: &ConnectOptions) -> Result<Client, ClientError> {
        let decorator = CallDecorator::new(options)?;
        let channel = dialer(address, options)?.connect_lazy();
        Ok(Client::from_channel(channel, decorator))
    }

    /// Wraps an existing channel.
    pub fn from_channel(channel: Channel, decorator: CallDecorator) -> Client {
        Client {
            kv: KvClient::with_interceptor(channel.clone(), decorator.clone())
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
            tables: TablesClient::with_interceptor(channel.clone(), decorator.clone())
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
            cluster: ClusterClient::with_interceptor(channel.clone(), decorator.clone())
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
            maintenance: MaintenanceClient::with_interceptor(channel, decorator)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        }
    }

    /// The raw `regatta.v1.KV` client (for tests and hot loops).
    pub fn kv(&self) -> KvClient<ApiChannel> {
        self.kv.clone()
    }

    /// The raw `regatta.v1.Tables` client.
    pub fn tables(&self) -> TablesClient<ApiChannel> {
        self.tables.clone()
    }

    /// The raw `regatta.v1.Cluster` client.
    pub fn cluster(&self) -> ClusterClient<ApiChannel> {
        self.cluster.clone()
    }

    /// The raw `maintenance.v1.Maintenance` client.
    pub fn maintenance(&self) -> MaintenanceClient<ApiChannel> {
        self.maintenance.clone()
    }

    /// Writes `value` under `key`; `prev_kv` asks for the previous key-value.
    pub async fn put(
        &self,
        table: impl Into<Bytes>,
        key: impl Into<Bytes>,
        value: impl Into<Bytes>,
        prev_kv: bool,
    ) -> Result<PutResponse, ClientError> {
        let request = PutRequest {
            table: table.into(),
            key: key.into(),
            value: value.into(),
            prev_kv,
        };
        Ok(self.kv().put(request).await?.into_inner())
    }

    /// Reads one key (serializable); a missing key is a response with no kvs.
    pub async fn get(
        &self,
        table: impl Into<Bytes>,
        key: impl Into<Bytes>,
    ) -> Result<RangeResponse, ClientError> {
        self.range(RangeRequest {
            table: table.into(),
            key: key.into(),
            ..RangeRequest::default()
        })
        .await
    }

    /// `Range` as is.
    pub async fn range(&self, request: RangeRequest) -> Result<RangeResponse, ClientError> {
        Ok(self.kv().range(request).await?.into_inner())
    }

    /// `IterateRange`: one point-in-time view in chunks; the last chunk has `more == false`.
    pub async fn iterate_range(&self, request: RangeRequest) -> Result<RangeStream, ClientError> {
        let stream = self.kv().iterate_range(request).await?.into_inner();
        Ok(Box::pin(stream.map_err(ClientError::from)))
    }

    /// `DeleteRange` as is.
    pub async fn delete_range(
        &self,
        request: DeleteRangeRequest,
    ) -> Result<DeleteRangeResponse, ClientError> {
        Ok(self.kv().delete_range(request).await?.into_inner())
    }

    /// `Txn` as is.
    pub async fn txn(&self, request: TxnRequest) -> Result<TxnResponse, ClientError> {
        Ok(self.kv().txn(request).await?.into_inner())
    }

    /// Creates a table; the response carries its id.
    pub async fn create_table(
        &self,
        name: impl Into<String>,
    ) -> Result<CreateTableResponse, ClientError> {
        let request = CreateTableRequest {
            name: name.into(),
            config: None,
        };
        Ok(self.tables().create(request).await?.into_inner())
    }

    /// Deletes a table and its data.
    pub async fn delete_table(
        &self,
        name: impl Into<String>,
    ) -> Result<DeleteTableResponse, ClientError> {
        let request = DeleteTableRequest { name: name.into() };
        Ok(self.tables().delete(request).await?.into_inner())
    }

    /// Lists tables (sorted by name by the server).
    pub async fn list_tables(&self) -> Result<ListTablesResponse, ClientError> {
        Ok(self.tables().list(ListTablesRequest {}).await?.into_inner())
    }

    /// The node's status; `config` adds its effective configuration (secrets redacted).
    pub async fn status(&self, config: bool) -> Result<StatusResponse, ClientError> {
        Ok(self
            .cluster()
            .status(StatusRequest { config })
            .await?
            .into_inner())
    }

    /// `Maintenance.Backup`: a point-in-time dump of `table` (Regatta's `.bak` format).
    pub async fn backup(&self, table: impl Into<Bytes>) -> Result<Backup, ClientError> {
        let response = self
            .maintenance()
            .backup(BackupRequest {
                table: table.into(),
            })
            .await?;
        let revision = revision_header(response.metadata());
        let chunks = response.into_inner().map_err(ClientError::from).and_then(
            |chunk: SnapshotChunk| async move {
                if chunk.len != 0 && chunk.len != chunk.data.len() as u64 {
                    return Err(ClientError::Status {
                        code: tonic::Code::DataLoss,
                        message: format!(
                            "backup chunk says len {} but carries {} bytes",
                            chunk.len,
                            chunk.data.len()
                        ),
                    });
                }
                Ok(chunk.data)
            },
        );
        Ok(Backup {
            revision,
            chunks: Box::pin(chunks),
        })
    }

    /// `Maintenance.Restore`: replaces `table`'s contents with the dump read from `chunks`
    /// (sent as `info{table}` then one chunk per item; keep items ≤ 1 MiB). Returns the
    /// table's revision after the restore when the server reports it (Armada does).
    ///
    /// If `chunks` yields an error, the call is cancelled rather than ended: a cleanly ended
    /// stream would let the server restore a truncated dump. The error is returned as
    /// [`ClientError::Input`].
    pub async fn restore<S>(
        &self,
        table: impl Into<Bytes>,
        chunks: S,
    ) -> Result<Option<u64>, ClientError>
    where
        S: Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
    {
        let (error_sender, error_receiver) = futures::channel::oneshot::channel();
        let info = RestoreMessage {
            data: Some(restore_message::Data::Info(RestoreInfo {
                table: table.into(),
            })),
        };
        let data = futures::stream::unfold(
            (Box::pin(chunks), Some(error_sender)),
            |(mut chunks, mut error_sender)| async move {
                match chunks.next().await {
                    Some(Ok(data)) => {
                        let message = RestoreMessage {
                            data: Some(restore_message::Data::Chunk(SnapshotChunk {
                                len: data.len() as u64,
                                data,
                                index: 0,
                            })),
                        };
                        Some((message, (chunks, error_sender)))
                    }
                    Some(Err(error)) => {
                        if let Some(sender) = error_sender.take() {
                            let _ = sender.send(error);
                        }
                        // Never end: the caller cancels the call when it sees the error.
                        futures::future::pending::<()>().await;
                        None
                    }
                    None => None,
                }
            },
        );
        let messages = futures::stream::once(async { info }).chain(data);
        let mut client = self.maintenance();
        let call = Box::pin(async move { client.restore(messages).await });
        let response = match futures::future::select(call, error_receiver).await {
            futures::future::Either::Left((result, _)) => result?,
            // Dropping the call here cancels it: the server sees a broken stream.
            futures::future::Either::Right((Ok(error), _call)) => {
                return Err(ClientError::Input(error));
            }
            // The chunks ended normally: wait for the server's answer.
            futures::future::Either::Right((Err(_), call)) => call.await?,
        };
        Ok(revision_header(response.metadata()))
    }

    /// `Maintenance.Reset` (follower clusters): wipes the replica of `table`, or of every
    /// table when `table` is `None`, and returns once it has been bootstrapped again from the
    /// leader cluster.
    pub async fn reset(&self, table: Option<&str>) -> Result<(), ClientError> {
        let request = ResetRequest {
            table: Bytes::copy_from_slice(table.unwrap_or_default().as_bytes()),
            reset_all: table.is_none(),
        };
        self.maintenance().reset(request).await?;
        Ok(())
    }

    /// The cluster's members.
    pub async fn member_list(&self) -> Result<MemberListResponse, ClientError> {
        Ok(self
            .cluster()
            .member_list(MemberListRequest {})
            .await?
            .into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_is_redacted_and_validated() {
        let options = ConnectOptions {
            token: Some("s3cret".into()),
            ..ConnectOptions::default()
        };
        let decorator = CallDecorator::new(&options).unwrap();
        assert!(!format!("{decorator:?}").contains("s3cret"));
        let bad = ConnectOptions {
            token: Some("line\nbreak".into()),
            ..ConnectOptions::default()
        };
        assert!(matches!(
            CallDecorator::new(&bad),
            Err(ClientError::InvalidToken { .. })
        ));
    }

    #[test]
    fn decorator_sets_header_and_deadline() {
        let options = ConnectOptions {
            token: Some("t0ken".into()),
            timeout: Some(Duration::from_secs(2)),
            ..ConnectOptions::default()
        };
        let mut decorator = CallDecorator::new(&options).unwrap();
        let request = decorator.call(tonic::Request::new(())).unwrap();
        assert_eq!(
            request.metadata().get("authorization").unwrap(),
            "Bearer t0ken"
        );
        assert!(request.metadata().get("grpc-timeout").is_some());
    }

    #[test]
    fn ca_file_needs_https() {
        let options = ConnectOptions {
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..ConnectOptions::default()
        };
        assert!(matches!(
            dialer("http://127.0.0.1:1", &options),
            Err(ClientError::InvalidAddress { .. })
        ));
        assert!(matches!(
            dialer("https://127.0.0.1:1", &options),
            Err(ClientError::CaFile { .. })
        ));
        assert!(matches!(
            dialer("unixs:///tmp/armada.sock", &options),
            Err(ClientError::CaFile { .. })
        ));
    }

    #[test]
    fn client_certificate_and_server_name_need_tls() {
        let identity = ConnectOptions {
            identity: Some(ClientIdentity {
                cert_file: "/nonexistent/client.pem".into(),
                key_file: "/nonexistent/client.key".into(),
            }),
            ..ConnectOptions::default()
        };
        let Err(ClientError::InvalidAddress { reason, .. }) =
            dialer("unix:///tmp/armada.sock", &identity)
        else {
            panic!("a client certificate over a plaintext address");
        };
        assert!(reason.contains("client certificate"), "{reason}");
        assert!(matches!(
            dialer("https://127.0.0.1:1", &identity),
            Err(ClientError::CertificateFile { .. })
        ));
        let named = ConnectOptions {
            server_name: Some("leader.example".into()),
            ..ConnectOptions::default()
        };
        assert!(dialer("http://127.0.0.1:1", &named).is_err());
    }

    #[tokio::test]
    async fn refused_connection_is_a_connect_error() {
        // Port 1 on loopback: nothing listens there in a test environment.
        let options = ConnectOptions {
            connect_timeout: Some(Duration::from_secs(2)),
            ..ConnectOptions::default()
        };
        let error = Client::connect_with("127.0.0.1:1", &options)
            .await
            .unwrap_err();
        assert!(matches!(error, ClientError::Connect { .. }), "{error}");
    }
}
