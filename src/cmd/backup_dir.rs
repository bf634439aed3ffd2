//! The backup directory shared by `armada backup` and `armada restore` (`docs/format.md`):
//! one `<table>.bak` per table (the Regatta dump) and `manifest.json`, written last.
//!
//! The manifest is Regatta's — `{"started", "finished", "tables": [{"name", "file_name",
//! "md5"}]}`, one line of JSON — plus two optional Armada fields per table, `sha256` and
//! `revision`. Unknown fields are ignored and the Armada fields may be absent, so manifests
//! travel both ways between Regatta and Armada.
//!
//! File names: a table's file is `<table>.bak` (Regatta's name) whenever that fits in one file
//! name ([`MAX_FILE_NAME_BYTES`]); a longer table name — valid names reach 255 bytes — gets a
//! shortened, hashed name ([`table_file_name`]). Readers never derive the name: they read
//! `file_name` from the manifest, as Regatta does.
//!
//! Crash safety: every file is written into a staging directory ([`STAGING_DIR`]) inside the
//! backup directory, fsynced, and only once every table is complete moved into place; the
//! manifest goes last (temporary file, fsync, rename, fsync). A directory therefore either has
//! no manifest or one whose files are complete (their checksums say so too).

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

/// Name of the manifest in a backup directory.
pub const MANIFEST_FILE: &str = "manifest.json";

/// Where `armada backup` writes the files of a run before they are complete: a hidden
/// directory inside the backup directory (same file system, so moving a file out is a rename).
pub const STAGING_DIR: &str = ".armada-backup.partial";

/// Longest file name the backup writes: `NAME_MAX` of Linux file systems (ext4, xfs, btrfs,
/// tmpfs) and of macOS's APFS.
pub const MAX_FILE_NAME_BYTES: usize = 255;

/// Extension of a table's dump file.
const TABLE_FILE_EXTENSION: &str = ".bak";

/// Bytes of the table name kept at the start of a hashed file name, so that an operator still
/// recognises the table.
const HASHED_NAME_PREFIX_BYTES: usize = 150;

/// The file name of `table` in a backup directory: `<table>.bak` when it fits in
/// [`MAX_FILE_NAME_BYTES`] (Regatta's layout), else the first [`HASHED_NAME_PREFIX_BYTES`] of
/// the name, `~`, the SHA-256 of the whole name in hex and `.bak` (219 bytes). `~` is not
/// allowed in table names, so a hashed name never equals another table's `<table>.bak`, and
/// the hash keeps names that share a prefix apart.
pub fn table_file_name(table: &str) -> String {
    if table.len() + TABLE_FILE_EXTENSION.len() <= MAX_FILE_NAME_BYTES {
        return format!("{table}{TABLE_FILE_EXTENSION}");
    }
    // Table names are ASCII, so any byte offset is a character boundary; `get` keeps this
    // total for other input.
    let prefix = table.get(..HASHED_NAME_PREFIX_BYTES).unwrap_or(table);
    let digest = hex(&<sha2::Sha256 as sha2::Digest>::digest(table.as_bytes()));
    format!("{prefix}~{digest}{TABLE_FILE_EXTENSION}")
}

/// The manifest of a backup directory.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// RFC 3339 time the backup started.
    #[serde(default)]
    pub started: String,
    /// RFC 3339 time the last table was written.
    #[serde(default)]
    pub finished: String,
    /// Sorted by name.
    pub tables: Vec<ManifestTable>,
}

/// One table of a backup.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ManifestTable {
    pub name: String,
    /// A file in the backup directory (no directories, never outside it).
    pub file_name: String,
    /// Lowercase hex MD5 of the file (Regatta).
    pub md5: String,
    /// Lowercase hex SHA-256 of the file (Armada).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// The table revision the dump observed (Armada).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<u64>,
}

/// The current time as RFC 3339 with nanoseconds, in UTC (as Regatta writes it).
pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

/// Checks a table name as the server would for a new table.
pub fn check_table_name(name: &str) -> anyhow::Result<()> {
    armada_server::api::validate::new_table_name(name)
        .map_err(|error| anyhow::anyhow!("invalid table name {name:?}: {error}"))
}

/// The file of a table in the backup directory. Only a plain file name is accepted: a
/// manifest must never make `restore` read outside its directory.
pub fn table_file(dir: &Path, file_name: &str) -> anyhow::Result<PathBuf> {
    let mut components = Path::new(file_name).components();
    match (components.next(), components.next()) {
        (Some(Component::Normal(name)), None)
            if name.to_str() == Some(file_name) && !file_name.contains('\\') =>
        {
            Ok(dir.join(file_name))
        }
        _ => bail!("file_name {file_name:?} is not a plain file name inside the backup directory"),
    }
}

impl Manifest {
    /// Reads and checks `<dir>/manifest.json`: every table name valid and listed once, every
    /// file name plain.
    pub fn read(dir: &Path) -> anyhow::Result<Manifest> {
        let path = dir.join(MANIFEST_FILE);
        let bytes =
            std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let manifest: Manifest = serde_json::from_slice(&bytes)
            .with_context(|| format!("{} is not a valid manifest", path.display()))?;
        manifest
            .check(dir)
            .with_context(|| format!("{} is not a valid manifest", path.display()))?;
        Ok(manifest)
    }

    fn check(&self, dir: &Path) -> anyhow::Result<()> {
        let mut names = BTreeSet::new();
        for table in &self.tables {
            check_table_name(&table.name)?;
            table_file(dir, &table.file_name).with_context(|| format!("table {}", table.name))?;
            if !names.insert(table.name.as_str()) {
                bail!("table {} is listed twice", table.name);
            }
            if !is_hex(&table.md5, 32) {
                bail!(
                    "table {}: md5 {:?} is not 32 hex digits",
                    table.name,
                    table.md5
                );
            }
            if let Some(sha256) = &table.sha256
                && !is_hex(sha256, 64)
            {
                bail!(
                    "table {}: sha256 {sha256:?} is not 64 hex digits",
                    table.name
                );
            }
        }
        Ok(())
    }

    /// Writes the manifest atomically (temporary file, fsync, rename, fsync the directory).
    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        let mut line = serde_json::to_vec(self)?;
        line.push(b'\n');
        let temporary = dir.join(format!(".{MANIFEST_FILE}.partial"));
        let mut file = std::fs::File::create(&temporary)
            .with_context(|| format!("cannot create {}", temporary.display()))?;
        file.write_all(&line)?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&temporary, dir.join(MANIFEST_FILE))?;
        sync_dir(dir)
    }
}

fn is_hex(text: &str, digits: usize) -> bool {
    text.len() == digits && text.bytes().all(|byte| byte.is_ascii_hexdigit())
}

/// Makes renames and removals in `dir` durable.
pub fn sync_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::File::open(dir)
        .and_then(|dir| dir.sync_all())
        .with_context(|| format!("cannot sync the directory {}", dir.display()))
}

/// MD5 and SHA-256 of a byte stream, computed in one pass.
#[derive(Clone, Default)]
pub struct Checksums {
    md5: md5::Md5,
    sha256: sha2::Sha256,
}

impl Checksums {
    pub fn update(&mut self, data: &[u8]) {
        use md5::Digest as _;
        self.md5.update(data);
        sha2::Digest::update(&mut self.sha256, data);
    }

    /// (md5, sha256) as lowercase hex.
    pub fn finish(self) -> (String, String) {
        use md5::Digest as _;
        (
            hex(&self.md5.finalize()),
            hex(&sha2::Digest::finalize(self.sha256)),
        )
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// A reader that feeds what passes through it to [`Checksums`] and a progress callback.
pub struct ChecksumReader<R, F> {
    pub inner: R,
    pub checksums: Checksums,
    pub on_read: F,
}

impl<R: Read, F: FnMut(usize)> Read for ChecksumReader<R, F> {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        let read = self.inner.read(buffer)?;
        self.checksums.update(&buffer[..read]);
        (self.on_read)(read);
        Ok(read)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regatta_manifests_parse_and_ours_add_fields() {
        let regatta = r#"{"started":"2024-01-02T03:04:05.123456789Z","finished":"2024-01-02T03:04:06Z","tables":[{"name":"a","file_name":"a.bak","md5":"d41d8cd98f00b204e9800998ecf8427e","type":"REPLICATED"}]}"#;
        let manifest: Manifest = serde_json::from_str(regatta).expect("parse");
        assert_eq!(manifest.tables[0].name, "a");
        assert_eq!(manifest.tables[0].sha256, None);
        assert!(manifest.check(Path::new("/backup")).is_ok());

        let ours = Manifest {
            started: "s".into(),
            finished: "f".into(),
            tables: vec![ManifestTable {
                name: "t".into(),
                file_name: "t.bak".into(),
                md5: "0".repeat(32),
                sha256: Some("1".repeat(64)),
                revision: Some(7),
            }],
        };
        let text = serde_json::to_string(&ours).unwrap();
        assert!(
            text.starts_with(
                r#"{"started":"s","finished":"f","tables":[{"name":"t","file_name":"t.bak","md5":"#
            ),
            "{text}"
        );
        assert_eq!(serde_json::from_str::<Manifest>(&text).unwrap(), ours);
    }

    #[test]
    fn table_file_names_fit_and_stay_regattas_when_they_can() {
        assert_eq!(table_file_name("config"), "config.bak");
        let longest_plain = "p".repeat(MAX_FILE_NAME_BYTES - TABLE_FILE_EXTENSION.len());
        assert_eq!(
            table_file_name(&longest_plain),
            format!("{longest_plain}.bak")
        );
        let mut seen = BTreeSet::new();
        for length in [longest_plain.len() + 1, 254, 255] {
            for last in ['a', 'b'] {
                let name = format!("{}{last}", "n".repeat(length - 1));
                check_table_name(&name).expect("a valid table name");
                let file_name = table_file_name(&name);
                assert!(file_name.len() <= MAX_FILE_NAME_BYTES, "{file_name}");
                assert!(file_name.starts_with(&name[..HASHED_NAME_PREFIX_BYTES]));
                assert!(file_name.contains('~') && file_name.ends_with(".bak"));
                assert!(table_file(Path::new("/backup"), &file_name).is_ok());
                assert!(seen.insert(file_name), "two names share a file");
            }
        }
        assert_eq!(
            table_file_name(&"x".repeat(255)),
            table_file_name(&"x".repeat(255))
        );
    }

    #[test]
    fn file_names_must_stay_in_the_directory() {
        let dir = Path::new("/backup");
        assert_eq!(table_file(dir, "t.bak").unwrap(), dir.join("t.bak"));
        assert_eq!(table_file(dir, ".t.bak").unwrap(), dir.join(".t.bak"));
        for bad in [
            "",
            ".",
            "..",
            "../t.bak",
            "/etc/passwd",
            "a/b.bak",
            "a\\b.bak",
            "./t.bak",
        ] {
            assert!(table_file(dir, bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn manifests_with_bad_entries_are_refused() {
        let table = |name: &str, file_name: &str| ManifestTable {
            name: name.into(),
            file_name: file_name.into(),
            md5: "d41d8cd98f00b204e9800998ecf8427e".into(),
            ..ManifestTable::default()
        };
        let check = |tables: Vec<ManifestTable>| {
            Manifest {
                tables,
                ..Manifest::default()
            }
            .check(Path::new("/backup"))
        };
        assert!(check(vec![table("a", "a.bak"), table("b", "b.bak")]).is_ok());
        assert!(check(vec![table("bad name", "a.bak")]).is_err());
        assert!(check(vec![table("", "a.bak")]).is_err());
        assert!(check(vec![table("a", "../a.bak")]).is_err());
        assert!(check(vec![table("a", "a.bak"), table("a", "b.bak")]).is_err());
        let mut short_md5 = table("a", "a.bak");
        short_md5.md5 = "abc".into();
        assert!(check(vec![short_md5]).is_err());
    }

    #[test]
    fn checksums_of_nothing_are_the_well_known_ones() {
        let (md5, sha256) = Checksums::default().finish();
        assert_eq!(md5, "d41d8cd98f00b204e9800998ecf8427e");
        assert_eq!(
            sha256,
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let rfc3339 = now_rfc3339();
        assert!(rfc3339.ends_with('Z') && rfc3339.contains('T'), "{rfc3339}");
    }
}
