//! `qgate [serve]`'s flags: one clap argument per entry of the library's settings table
//! ([`qgate::config::FLAGS`]), with its variable and help, so a setting is declared once
//! for the flag, the environment and the TOML file.

use std::ffi::{OsStr, OsString};
use std::path::PathBuf;

use clap::{value_parser, Arg, ArgAction, ArgMatches, Args, Command, FromArgMatches};
use qgate::config::{Config, ConfigError, Flag, FlagValue, FLAGS};

/// The serve flags as given: the configuration file, and each setting's value from its
/// flag or variable (clap resolved which wins: the flag).
#[derive(Debug, Clone, Default)]
pub struct ServeArgs {
    config: Option<PathBuf>,
    given: Vec<(&'static Flag, OsString)>,
}

/// clap's id of a flag, as the derive named the field it used to be (`amqp_listen`).
fn id(flag: &Flag) -> String {
    flag.flag.replace('-', "_")
}

impl Args for ServeArgs {
    fn augment_args(cmd: Command) -> Command {
        let cmd = cmd.arg(
            Arg::new("config")
                .long("config")
                .env("QGATE_CONFIG")
                .value_name("CONFIG")
                .value_parser(value_parser!(PathBuf))
                .action(ArgAction::Set)
                .help("TOML configuration file (defaults < file < env < flags)"),
        );
        FLAGS.iter().fold(cmd, |cmd, flag| {
            let arg = Arg::new(id(flag))
                .long(flag.flag)
                .env(flag.env())
                .value_name(id(flag).to_ascii_uppercase())
                .action(ArgAction::Set)
                .help(flag.help);
            // Numbers and paths are checked here, with clap's messages
            // (`invalid value 'x' for '--heartbeat <HEARTBEAT>'`); text by the config.
            cmd.arg(match flag.value {
                FlagValue::Text => arg.value_parser(value_parser!(String)),
                FlagValue::Path => arg.value_parser(value_parser!(PathBuf)),
                FlagValue::U16 => arg.value_parser(value_parser!(u16)),
                FlagValue::U32 => arg.value_parser(value_parser!(u32)),
                FlagValue::U64 => arg.value_parser(value_parser!(u64)),
                FlagValue::Usize => arg.value_parser(value_parser!(usize)),
            })
        })
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
    }
}

impl FromArgMatches for ServeArgs {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        let given = FLAGS
            .iter()
            .filter_map(|flag| {
                let mut raw = m.get_raw(&id(flag))?;
                Some((flag, raw.next()?.to_owned()))
            })
            .collect();
        Ok(ServeArgs {
            config: m.get_one::<PathBuf>("config").cloned(),
            given,
        })
    }

    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(m)?;
        Ok(())
    }
}

impl ServeArgs {
    /// The configuration these flags give, checked before anything starts.
    pub fn load(self) -> anyhow::Result<Config> {
        let given: Vec<(&Flag, &OsStr)> = self
            .given
            .iter()
            .map(|(flag, value)| (*flag, value.as_os_str()))
            .collect();
        let config = Config::load(self.config.as_deref(), &given)?;
        // The log filter's grammar is tracing-subscriber's, which only the binary links.
        tracing_subscriber::EnvFilter::try_new(&config.log).map_err(|e| ConfigError::Invalid {
            name: "log",
            reason: format!(
                "'{}' is not a log filter ({e}): expected a level (error, warn, info, \
                     debug, trace) or target=level directives, e.g. info,qgate=debug",
                config.log
            ),
        })?;
        // A fresh data directory gets the configured vhosts; one that exists already is
        // checked by the server once it is open (vhosts change at runtime).
        if config.upstream.url.is_empty()
            && !config.storage.data_dir.exists()
            && !config.vhosts.contains(&config.memcache.vhost)
        {
            return Err(ConfigError::Invalid {
                name: "memcache.vhost",
                reason: format!(
                    "vhost '{}' is not in vhosts, which a new data directory starts with",
                    config.memcache.vhost
                ),
            }
            .into());
        }
        Ok(config)
    }
}
