//! Certificates and keys from PEM files, shared by the gRPC listeners ([`crate::listener`]) and
//! the cluster transport ([`crate::transport`]).
//!
//! * [`load_chain`], [`load_key`], [`load_roots`], [`system_roots`]: read once, at start-up;
//!   a missing or malformed file fails start-up with the file's name.
//! * [`ReloadingIdentity`]: this node's certificate chain and key, **re-read when the files
//!   change** (hot rotation). It is the rustls certificate resolver of a server and of a client,
//!   so every new handshake uses the current identity; established connections keep theirs.
//!   Cost: at most one `stat` of each file per [`RELOAD_CHECK_INTERVAL`] (done inside a
//!   handshake, no background task), and a re-read only when a file's modification time, size
//!   or inode changed (a rename-into-place and a Kubernetes secret's symlink swap both count).
//!   A new pair that cannot be used (unreadable, malformed, key not matching the certificate —
//!   e.g. the certificate was replaced and the key not yet) is logged as an error and the
//!   previous identity is kept; it is tried again at the next check, and logged again only if
//!   the files change again.
//! * [`common_names_of`]: the subject common names of a certificate (for `allowed-cn`).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

/// How often, at most, a [`ReloadingIdentity`] looks at its files.
pub const RELOAD_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// A certificate or key file that cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{what} {path}: {reason}")]
pub struct CertificateError {
    /// `certificate file`, `key file`, `CA file`, ….
    pub what: &'static str,
    pub path: PathBuf,
    pub reason: String,
}

impl CertificateError {
    fn new(what: &'static str, path: &Path, reason: impl std::fmt::Display) -> CertificateError {
        CertificateError {
            what,
            path: path.to_path_buf(),
            reason: reason.to_string(),
        }
    }
}

/// The certificates of a PEM file, in order (leaf first for a chain); at least one.
pub fn load_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, CertificateError> {
    load_certificates("certificate file", path)
}

fn load_certificates(
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, CertificateError> {
    let chain = CertificateDer::pem_file_iter(path)
        .map_err(|error| CertificateError::new(what, path, error))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| CertificateError::new(what, path, error))?;
    if chain.is_empty() {
        return Err(CertificateError::new(
            what,
            path,
            "no PEM certificate in the file",
        ));
    }
    Ok(chain)
}

/// The private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, CertificateError> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|error| CertificateError::new("key file", path, error))
}

/// The trust anchors of a PEM file of CA certificates.
pub fn load_roots(path: &Path) -> Result<rustls::RootCertStore, CertificateError> {
    let mut roots = rustls::RootCertStore::empty();
    for certificate in load_certificates("CA file", path)? {
        roots
            .add(certificate)
            .map_err(|error| CertificateError::new("CA file", path, error))?;
    }
    Ok(roots)
}

/// The operating system's trust anchors; an error if there are none.
pub fn system_roots() -> Result<rustls::RootCertStore, CertificateError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = rustls::RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let reason = match found.errors.first() {
            Some(error) => format!("no usable system CA certificate ({error})"),
            None => "no system CA certificate found".to_string(),
        };
        return Err(CertificateError::new(
            "system trust store",
            Path::new("(system)"),
            reason,
        ));
    }
    Ok(roots)
}

/// The subject common names (CN) of a DER certificate; empty if it has none or cannot be
/// parsed.
pub fn common_names_of(certificate: &CertificateDer<'_>) -> Vec<String> {
    match x509_parser::parse_x509_certificate(certificate.as_ref()) {
        Ok((_, parsed)) => parsed
            .subject()
            .iter_common_name()
            .filter_map(|name| name.as_str().ok().map(str::to_string))
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// What identifies a version of a file: modification time, size and inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileStamp {
    modified_seconds: i64,
    modified_nanoseconds: i64,
    length: u64,
    inode: u64,
}

impl FileStamp {
    /// The stamp of the file `path` points to (symbolic links followed); `None` if it is gone.
    fn of(path: &Path) -> Option<FileStamp> {
        use std::os::unix::fs::MetadataExt;
        let metadata = std::fs::metadata(path).ok()?;
        Some(FileStamp {
            modified_seconds: metadata.mtime(),
            modified_nanoseconds: metadata.mtime_nsec(),
            length: metadata.size(),
            inode: metadata.ino(),
        })
    }
}

/// A certificate chain and key, re-read from their files when they change (see the module
/// documentation). Serves as a rustls certificate resolver for servers and clients.
#[derive(Debug)]
pub struct ReloadingIdentity {
    cert_file: PathBuf,
    key_file: PathBuf,
    provider: Arc<CryptoProvider>,
    state: Mutex<IdentityState>,
}

#[derive(Debug)]
struct IdentityState {
    current: Arc<CertifiedKey>,
    /// The files' stamps when `current` was read from them.
    loaded: (Option<FileStamp>, Option<FileStamp>),
    /// The stamps of the last pair that failed to load (logged once per version).
    failed: Option<(Option<FileStamp>, Option<FileStamp>)>,
    checked_at: Instant,
}

impl ReloadingIdentity {
    /// Reads the pair once; fails if it cannot be used.
    pub fn load(
        cert_file: &Path,
        key_file: &Path,
        provider: Arc<CryptoProvider>,
    ) -> Result<ReloadingIdentity, CertificateError> {
        let stamps = (FileStamp::of(cert_file), FileStamp::of(key_file));
        let current = read_certified_key(cert_file, key_file, &provider)?;
        Ok(ReloadingIdentity {
            cert_file: cert_file.to_path_buf(),
            key_file: key_file.to_path_buf(),
            provider,
            state: Mutex::new(IdentityState {
                current,
                loaded: stamps,
                failed: None,
                checked_at: Instant::now(),
            }),
        })
    }

    /// The identity to present now: re-read first if the files changed since the last look
    /// (at most one look per [`RELOAD_CHECK_INTERVAL`]).
    pub fn current(&self) -> Arc<CertifiedKey> {
        let mut state = crate::fail_stop::lock(&self.state, "the certificate reloader");
        if state.checked_at.elapsed() >= RELOAD_CHECK_INTERVAL {
            state.checked_at = Instant::now();
            self.reload_if_changed(&mut state);
        }
        state.current.clone()
    }

    /// The leaf certificate currently presented.
    pub fn leaf(&self) -> CertificateDer<'static> {
        self.current().cert[0].clone()
    }

    fn reload_if_changed(&self, state: &mut IdentityState) {
        let stamps = (
            FileStamp::of(&self.cert_file),
            FileStamp::of(&self.key_file),
        );
        if stamps == state.loaded {
            return;
        }
        match read_certified_key(&self.cert_file, &self.key_file, &self.provider) {
            Ok(reloaded) => {
                state.current = reloaded;
                state.loaded = stamps;
                state.failed = None;
                tracing::info!(
                    cert_file = %self.cert_file.display(),
                    key_file = %self.key_file.display(),
                    "reloaded the TLS certificate and key: new connections use them"
                );
            }
            Err(error) => {
                if state.failed != Some(stamps) {
                    state.failed = Some(stamps);
                    tracing::error!(
                        %error,
                        cert_file = %self.cert_file.display(),
                        key_file = %self.key_file.display(),
                        "the changed TLS certificate or key cannot be used: keeping the previous certificate"
                    );
                }
            }
        }
    }
}

fn read_certified_key(
    cert_file: &Path,
    key_file: &Path,
    provider: &CryptoProvider,
) -> Result<Arc<CertifiedKey>, CertificateError> {
    let chain = load_chain(cert_file)?;
    let key = load_key(key_file)?;
    CertifiedKey::from_der(chain, key, provider)
        .map(Arc::new)
        .map_err(|error| {
            CertificateError::new(
                "key file",
                key_file,
                format!("does not go with {}: {error}", cert_file.display()),
            )
        })
}

impl rustls::server::ResolvesServerCert for ReloadingIdentity {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

impl rustls::client::ResolvesClientCert for ReloadingIdentity {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _signature_schemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider() -> Arc<CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    /// Writes a fresh self-signed certificate named `name` and its key; returns the leaf.
    fn write_pair(cert_file: &Path, key_file: &Path, name: &str) -> CertificateDer<'static> {
        let certified = rcgen::generate_simple_self_signed(vec![name.to_string()]).expect("cert");
        // Rename into place, as rotation tools do: a reader never sees half a file.
        let temporary = cert_file.with_extension("tmp");
        std::fs::write(&temporary, certified.cert.pem()).expect("write");
        std::fs::rename(&temporary, cert_file).expect("rename");
        std::fs::write(&temporary, certified.signing_key.serialize_pem()).expect("write");
        std::fs::rename(&temporary, key_file).expect("rename");
        certified.cert.der().clone()
    }

    /// Forces the next `current()` to look at the files.
    fn expire_check(identity: &ReloadingIdentity) {
        let mut state = identity.state.lock().expect("lock");
        state.checked_at = Instant::now() - RELOAD_CHECK_INTERVAL;
    }

    #[test]
    fn a_changed_pair_is_served_and_a_broken_one_keeps_the_previous() {
        let directory = tempfile::tempdir().expect("tempdir");
        let cert_file = directory.path().join("server.crt");
        let key_file = directory.path().join("server.key");
        let first = write_pair(&cert_file, &key_file, "first.example");
        let identity = ReloadingIdentity::load(&cert_file, &key_file, provider()).expect("load");
        assert_eq!(identity.leaf(), first);

        // Within the check interval nothing is looked at.
        let second = write_pair(&cert_file, &key_file, "second.example");
        assert_eq!(identity.leaf(), first);
        expire_check(&identity);
        assert_eq!(identity.leaf(), second);

        // A certificate without its key, then garbage: the previous pair stays.
        let other = rcgen::generate_simple_self_signed(vec!["third.example".into()]).expect("c");
        std::fs::write(&cert_file, other.cert.pem()).expect("write");
        expire_check(&identity);
        assert_eq!(identity.leaf(), second);
        std::fs::write(&cert_file, "not a certificate").expect("write");
        expire_check(&identity);
        assert_eq!(identity.leaf(), second);

        // A good pair again is picked up.
        let fourth = write_pair(&cert_file, &key_file, "fourth.example");
        expire_check(&identity);
        assert_eq!(identity.leaf(), fourth);
    }

    #[test]
    fn unusable_files_fail_the_first_load_naming_the_file() {
        let directory = tempfile::tempdir().expect("tempdir");
        let cert_file = directory.path().join("server.crt");
        let key_file = directory.path().join("server.key");
        let error = ReloadingIdentity::load(&cert_file, &key_file, provider()).expect_err("none");
        assert_eq!(error.path, cert_file);
        std::fs::write(&cert_file, "garbage").expect("write");
        let error = load_chain(&cert_file).expect_err("garbage");
        assert!(error.to_string().contains("server.crt"), "{error}");
        write_pair(&cert_file, &key_file, "a.example");
        let mismatched = directory.path().join("other.key");
        let other = rcgen::generate_simple_self_signed(vec!["b.example".into()]).expect("c");
        std::fs::write(&mismatched, other.signing_key.serialize_pem()).expect("write");
        let error = ReloadingIdentity::load(&cert_file, &mismatched, provider()).expect_err("mix");
        assert!(error.reason.contains("does not go with"), "{error}");
    }

    #[test]
    fn common_names_are_read_from_the_subject() {
        let mut params = rcgen::CertificateParams::new(vec!["client.example".into()]).expect("p");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "follower-a");
        let key = rcgen::KeyPair::generate().expect("key");
        let certificate = params.self_signed(&key).expect("cert");
        assert_eq!(common_names_of(certificate.der()), vec!["follower-a"]);
        assert!(common_names_of(&CertificateDer::from(vec![1, 2, 3])).is_empty());
    }
}
