//! The configuration reference, generated from the clap definitions (issue 33): every setting
//! that has an environment variable — its variable, flag, default, the commands that read it
//! and its doc comment — as one Markdown table. `ingress --config-reference` and `workers
//! config-reference` print their parts; `scripts/reference` writes
//! `docs/reference/configuration.md` from them, and a test fails when the committed file and
//! the code disagree.

use std::collections::BTreeMap;

/// One setting, as the commands that read it declare it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    pub env: String,
    pub flag: String,
    pub default: String,
    /// The commands that read it (`ingress`, `workers scheduler`, …), in order.
    pub commands: Vec<String>,
    pub help: String,
}

/// The settings of `command` and of every subcommand below it, each named `{prefix} {name}`;
/// a setting several commands read is one row (its first help and default win; a command that
/// declares it differently is a bug the test of this module catches).
pub fn settings(command: &clap::Command, name: &str) -> Vec<Setting> {
    let mut rows: BTreeMap<String, Setting> = BTreeMap::new();
    collect(command, name, &mut rows);
    rows.into_values().collect()
}

fn collect(command: &clap::Command, name: &str, rows: &mut BTreeMap<String, Setting>) {
    for arg in command.get_arguments() {
        let Some(env) = arg.get_env().and_then(|e| e.to_str()) else {
            continue;
        };
        let row = rows.entry(env.to_owned()).or_insert_with(|| Setting {
            env: env.to_owned(),
            flag: arg.get_long().map(|l| format!("--{l}")).unwrap_or_default(),
            default: arg
                .get_default_values()
                .iter()
                .filter_map(|v| v.to_str())
                .collect::<Vec<_>>()
                .join(","),
            commands: Vec::new(),
            help: arg
                .get_long_help()
                .or_else(|| arg.get_help())
                .map(|h| h.to_string())
                .unwrap_or_default(),
        });
        if !row.commands.iter().any(|c| c == name) {
            row.commands.push(name.to_owned());
        }
    }
    for sub in command.get_subcommands() {
        if sub.get_name() == "help" {
            continue;
        }
        collect(sub, &format!("{name} {}", sub.get_name()), rows);
    }
}

/// The variables every binary reads outside its flags (logging).
pub fn every_binary() -> Vec<Setting> {
    crate::telemetry::LOG_VARIABLES
        .iter()
        .map(|(env, default, help)| Setting {
            env: (*env).to_owned(),
            flag: String::new(),
            default: (*default).to_owned(),
            commands: vec!["every binary".into()],
            help: (*help).to_owned(),
        })
        .collect()
}

/// One cell: no line breaks, `|` escaped.
fn cell(s: &str) -> String {
    s.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace('|', "\\|")
}

/// `settings` as a Markdown table.
pub fn markdown(settings: &[Setting]) -> String {
    let mut out =
        String::from("| variable | flag | default | read by | meaning |\n|---|---|---|---|---|\n");
    for s in settings {
        let default = if s.default.is_empty() {
            "—".to_owned()
        } else {
            format!("`{}`", cell(&s.default))
        };
        let flag = if s.flag.is_empty() {
            "—".to_owned()
        } else {
            format!("`{}`", s.flag)
        };
        out.push_str(&format!(
            "| `{}` | {} | {} | {} | {} |\n",
            s.env,
            flag,
            default,
            s.commands
                .iter()
                .map(|c| format!("`{c}`"))
                .collect::<Vec<_>>()
                .join(", "),
            cell(&s.help),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Args, Parser, Subcommand};

    #[derive(Args)]
    struct Shared {
        /// Where it listens | on which port.
        #[arg(long, env = "T_ADDR", default_value = "127.0.0.1:1")]
        addr: String,
    }

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: Cmd,
    }

    #[derive(Subcommand)]
    enum Cmd {
        One {
            #[command(flatten)]
            shared: Shared,
            /// A secret.
            #[arg(long, env = "T_SECRET", hide_env_values = true)]
            secret: Option<String>,
        },
        Two {
            #[command(flatten)]
            shared: Shared,
            #[arg(long)]
            no_env: bool,
        },
    }

    #[test]
    fn one_row_per_variable_with_every_command_that_reads_it() {
        use clap::CommandFactory;
        let rows = settings(&Cli::command(), "t");
        assert_eq!(rows.len(), 2, "{rows:?}");
        assert_eq!(rows[0].env, "T_ADDR");
        assert_eq!(rows[0].commands, ["t one", "t two"]);
        assert_eq!(rows[0].default, "127.0.0.1:1");
        let table = markdown(&rows);
        assert!(table.contains("| `T_ADDR` | `--addr` | `127.0.0.1:1` | `t one`, `t two` | Where it listens \\| on which port |"), "{table}");
        assert!(
            table.contains("| `T_SECRET` | `--secret` | — | `t one` | A secret |"),
            "{table}"
        );
    }
}
