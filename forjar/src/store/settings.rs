//! A store's settings: `<store>/.settings.yaml`, written by `store set`.

use std::fs;
use std::io;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{Store, StoreError};

/// What a store is set to do.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Settings {
    /// `gc` keeps the inputs live entries were built from (Nix's `keep-outputs`), so that a
    /// developer's store does not fetch and build them again after each collection.
    #[serde(default)]
    pub keep_build_inputs: bool,
}

impl Store {
    fn settings_path(&self) -> PathBuf {
        self.dir().join(".settings.yaml")
    }

    /// The store's settings; the defaults when it has none.
    pub fn settings(&self) -> Result<Settings, StoreError> {
        let path = self.settings_path();
        match fs::read_to_string(&path) {
            Ok(text) => serde_yaml_ng::from_str(&text).map_err(|e| StoreError::Damaged {
                path,
                reason: format!("{e}; the settings are `keep-build-inputs: true|false`"),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Settings::default()),
            Err(e) => Err(StoreError::io("cannot read", &path)(e)),
        }
    }

    /// Replaces the store's settings, in one rename.
    pub fn set_settings(&self, settings: &Settings) -> Result<(), StoreError> {
        let path = self.settings_path();
        let text = serde_yaml_ng::to_string(settings).expect("settings serialise");
        super::write_atomically(&path, text.as_bytes())
    }
}
