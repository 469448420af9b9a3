//! The layer above the TOML file: what the command line sets (`tern serve --listen ...`).
//! Filled by the CLI; the configuration knows nothing of the CLI.

use std::net::SocketAddr;
use std::path::PathBuf;

use super::{read_file, Config, ConfigError};

/// Values that replace the file's (or the defaults'); `None` leaves a key alone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    /// The TOML file to read first (none: the built-in defaults).
    pub config_file: Option<PathBuf>,
    /// `listeners.tcp.listen`.
    pub listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    /// `log.level`.
    pub log_level: Option<String>,
    /// `admin.listen`.
    pub admin_listen: Option<SocketAddr>,
}

impl Config {
    /// Defaults, then the file if one is named, then the overrides, then
    /// [`validate`](Self::validate): validation waits until every layer is applied, so
    /// that a value the command line overrides does not stop the start.
    pub fn with_overrides(overrides: &Overrides) -> Result<Config, ConfigError> {
        let mut config = match &overrides.config_file {
            Some(path) => Self::parse_toml(&read_file(path)?, path)?,
            None => Config::default(),
        };
        if let Some(listen) = overrides.listen {
            config.listeners.tcp.listen = listen;
        }
        if let Some(data_dir) = &overrides.data_dir {
            config.data_dir = data_dir.clone();
        }
        if let Some(level) = &overrides.log_level {
            config.log.level = level.clone();
        }
        if let Some(listen) = overrides.admin_listen {
            config.admin.listen = listen;
        }
        config.validate()?;
        Ok(config)
    }
}
