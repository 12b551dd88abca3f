//! `meta.yaml`: the provenance of a store entry.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::hash::{Key, TreeDigest};
use crate::store::EntryName;

/// The `meta.yaml` schema version this forjar writes and reads.
pub const SCHEMA: u64 = 1;

/// What produced an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EntryKind {
    /// An output of a sandboxed build.
    Build,
    /// The output of a fixed-output derivation, verified against its declared digest.
    Fixed,
    /// A source imported by content.
    Source,
}

/// The provenance of a store entry, as written to its `meta.yaml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// The schema version, [`SCHEMA`].
    pub schema: u64,
    /// The derivation or source name.
    pub name: String,
    /// The output name (`out` for sources).
    pub output: String,
    /// What produced the entry.
    pub kind: EntryKind,
    /// The entry's full key (its name holds the first 20 bytes).
    pub key: Key,
    /// The closure key of the derivation that built it (builds only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub derivation: Option<Key>,
    /// The tree digest of `content`.
    pub digest: TreeDigest,
    /// Total bytes of the regular files in `content`.
    pub size: u64,
    /// Store entries whose hash the content mentions, sorted.
    #[serde(default)]
    pub references: Vec<EntryName>,
    /// The build's inputs, by name.
    #[serde(default)]
    pub inputs: BTreeMap<String, EntryName>,
    /// The platform it was built for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    /// The sandbox level it was built at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
    /// The forjar version that made the entry.
    pub forjar_version: String,
    /// When the build or import started (RFC 3339, UTC).
    pub started: String,
    /// When it ended.
    pub finished: String,
    /// How long it took, in milliseconds.
    pub duration_ms: u64,
    /// The tree digest of the build log, if there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_digest: Option<TreeDigest>,
    /// The Rust source location (`file:line`) of the derivation's definition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// For a source, the host path it was imported from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_path: Option<PathBuf>,
}

/// Why a `meta.yaml` could not be read.
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    /// The file is not the YAML of a `meta.yaml`.
    #[error(
        "`{}` is damaged: {reason}; run `forjar store verify`, and delete the entry if it \
         reports it",
        .path.display()
    )]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The file was written by a forjar with another schema.
    #[error(
        "`{}` has schema version {found}, but this forjar reads version {SCHEMA}; use the \
         forjar that wrote this store, or a newer one",
        .path.display()
    )]
    UnknownSchema {
        /// The file.
        path: PathBuf,
        /// The version it declares.
        found: String,
    },
}

impl Meta {
    /// Parses a `meta.yaml`; `path` names it in errors.
    pub fn parse(bytes: &[u8], path: &Path) -> Result<Self, MetaError> {
        let damaged = |reason: String| MetaError::Damaged {
            path: path.to_path_buf(),
            reason,
        };
        let value: serde_yaml_ng::Value =
            serde_yaml_ng::from_slice(bytes).map_err(|e| damaged(format!("not YAML ({e})")))?;
        let schema = value
            .get("schema")
            .ok_or_else(|| damaged("it has no `schema` field".into()))?;
        if schema.as_u64() != Some(SCHEMA) {
            let found = serde_yaml_ng::to_string(schema)
                .unwrap_or_default()
                .trim()
                .to_string();
            return Err(MetaError::UnknownSchema {
                path: path.to_path_buf(),
                found,
            });
        }
        serde_yaml_ng::from_value(value).map_err(|e| damaged(e.to_string()))
    }

    /// The YAML text of this record.
    pub fn to_yaml(&self) -> String {
        serde_yaml_ng::to_string(self)
            .expect("a Meta always serialises: it holds only strings, numbers and maps")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> Meta {
        Meta {
            schema: SCHEMA,
            name: "hello".into(),
            output: "out".into(),
            kind: EntryKind::Source,
            key: "22".repeat(32).parse().unwrap(),
            derivation: None,
            digest: format!("blake3:{}", "33".repeat(32)).parse().unwrap(),
            size: 12,
            references: vec![],
            inputs: BTreeMap::new(),
            system: None,
            sandbox: None,
            forjar_version: "0.1.0".into(),
            started: "2026-11-21T13:00:00Z".into(),
            finished: "2026-11-21T13:00:01Z".into(),
            duration_ms: 1000,
            log_digest: None,
            location: Some("examples/hello/main.rs:12".into()),
            source_path: None,
        }
    }

    #[test]
    fn meta_round_trips() {
        let meta = sample();
        assert_eq!(
            Meta::parse(meta.to_yaml().as_bytes(), Path::new("m")).unwrap(),
            meta
        );
    }

    #[test]
    fn an_unknown_schema_is_named() {
        let text = sample().to_yaml().replace("schema: 1", "schema: 7");
        let err = Meta::parse(text.as_bytes(), Path::new("/s/x/meta.yaml")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "`/s/x/meta.yaml` has schema version 7, but this forjar reads version 1; use the forjar \
             that wrote this store, or a newer one"
        );
    }

    #[test]
    fn a_damaged_meta_is_an_error_not_a_panic() {
        let cases: [&[u8]; 5] = [
            b"{{{ not yaml",
            b"name: hello\n",
            b"schema: 1\nname: hello\n",
            b"",
            b"\xff\xfe\x00",
        ];
        for bytes in cases {
            let err = Meta::parse(bytes, Path::new("/s/x/meta.yaml")).unwrap_err();
            assert!(matches!(err, MetaError::Damaged { .. }), "{err}");
            assert!(
                err.to_string().starts_with("`/s/x/meta.yaml` is damaged: "),
                "{err}"
            );
        }
        let bad_digest = sample().to_yaml().replace("blake3:", "sha1:");
        let err = Meta::parse(bad_digest.as_bytes(), Path::new("m")).unwrap_err();
        assert!(err.to_string().contains("malformed digest"), "{err}");
    }
}
