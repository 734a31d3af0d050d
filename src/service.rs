//! `thv-actor service install|uninstall`: run `thv-actor serve` as a user
//! service, so that workloads are up whenever their clients start.
//!
//! On Linux this is a systemd user unit, `thv-actor.service`, in
//! `$XDG_CONFIG_HOME/systemd/user/` (default `~/.config/systemd/user/`). On
//! macOS it is a launchd agent, `~/Library/LaunchAgents/dev.thv-actor.serve.plist`.
//!
//! # Limitations
//!
//! - The launchd agent is written but has never been run by the tests,
//!   which run on Linux only.
//! - A systemd user service runs while its user is logged in; to keep it
//!   running without a login, `loginctl enable-linger` is up to the user.
//! - The service runs `serve` with its default keystore choice (`auto`) and
//!   the environment of the service manager, not of the installing shell.
//! - Windows has no service support here.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use crate::client_config::{program_path, write_atomically};
use crate::CliError;

/// The systemd unit's name.
const UNIT: &str = "thv-actor.service";
/// The launchd agent's label, also its file name.
const AGENT_LABEL: &str = "dev.thv-actor.serve";
/// What a user runs to start the unit once a user manager is reachable.
const START_HINT: &str =
    "systemctl --user daemon-reload && systemctl --user enable --now thv-actor.service";

#[derive(Debug, clap::Subcommand)]
pub enum ServiceCommand {
    /// Install and start `thv-actor serve` as a user service.
    ///
    /// On Linux this writes the systemd user unit thv-actor.service
    /// (Restart=on-failure) and enables it with `systemctl --user`; when no
    /// user manager is reachable, the unit is still written and the command
    /// to start it later is printed. On macOS it writes and loads the launchd
    /// agent dev.thv-actor.serve. Installing again updates the file and
    /// restarts the service.
    Install {
        /// The config file the service's serve reads (made absolute; it must
        /// exist). Without it, serve's own default applies.
        #[arg(long, env = "THV_ACTOR_CONFIG")]
        config: Option<PathBuf>,

        /// Only write the unit file; do not enable or start it.
        #[arg(long)]
        no_start: bool,
    },

    /// Stop, disable and remove the user service installed by `install`.
    ///
    /// Keys and workload state are left alone. Exits 0 when nothing is
    /// installed.
    Uninstall,
}

/// Runs one service command for this platform's service manager.
///
/// # Errors
///
/// No path for this program; a `--config` that does not exist; a unit file
/// that cannot be written or removed; `systemctl --user` or `launchctl`
/// failing once reached. An unreachable systemd user manager is not an
/// error: the file work is done and the command to finish it is printed.
pub fn run(cmd: ServiceCommand) -> Result<ExitCode, CliError> {
    let manager = if cfg!(target_os = "macos") {
        Manager::Launchd
    } else if cfg!(target_os = "linux") {
        Manager::Systemd
    } else {
        return Err(CliError::new(
            "service install supports Linux (systemd user units) and macOS (launchd agents) only",
        ));
    };

    match cmd {
        ServiceCommand::Install { config, no_start } => install(manager, config, no_start)?,
        ServiceCommand::Uninstall => uninstall(manager)?,
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Clone, Copy)]
enum Manager {
    Systemd,
    Launchd,
}

/// The systemd user unit that runs `<exe> serve [--config <config>]`.
///
/// Each path is escaped for `ExecStart=`: `%` is doubled so that systemd
/// expands no specifier, so is `$` in an argument (the executable's path
/// gets no variable expansion), and a path with characters outside a plain
/// set (a space, a semicolon) is double-quoted with C-style escapes.
///
/// # Limitations
///
/// systemd refuses an executable path with quotes, backslashes or control
/// characters however it is written; install refuses such a path.
pub fn unit_text(exe: &Path, config: Option<&Path>) -> String {
    let mut exec = format!("{} serve", systemd_word(&exe.to_string_lossy(), false));
    if let Some(config) = config {
        exec.push_str(" --config ");
        exec.push_str(&systemd_word(&config.to_string_lossy(), true));
    }
    format!(
        "# Written by `thv-actor service install`; `thv-actor service uninstall` removes it.\n\
         [Unit]\n\
         Description=thv-actor: shared-key authentication in front of local MCP servers\n\
         \n\
         [Service]\n\
         Type=simple\n\
         ExecStart={exec}\n\
         Restart=on-failure\n\
         RestartSec=2\n\
         \n\
         [Install]\n\
         WantedBy=default.target\n"
    )
}

/// Whether systemd runs an executable at `path`: it refuses quotes,
/// backslashes and control characters in one, even escaped.
fn systemd_can_run(path: &str) -> bool {
    !path.chars().any(|c| c.is_control() || "\"'\\".contains(c))
}

/// One `ExecStart=` word that systemd reads back as exactly `arg`; `$` is
/// escaped only where variables expand, in the arguments.
fn systemd_word(arg: &str, expands_vars: bool) -> String {
    let plain = !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+:=@,%$".contains(c));
    let mut word = String::with_capacity(arg.len() + 2);
    if !plain {
        word.push('"');
    }
    for c in arg.chars() {
        match c {
            '%' => word.push_str("%%"),
            '$' if expands_vars => word.push_str("$$"),
            '\\' => word.push_str("\\\\"),
            '"' => word.push_str("\\\""),
            '\n' => word.push_str("\\n"),
            '\t' => word.push_str("\\t"),
            c if c.is_control() => word.push_str(&format!("\\x{:02x}", c as u32)),
            c => word.push(c),
        }
    }
    if !plain {
        word.push('"');
    }
    word
}

/// The launchd agent that runs `<exe> serve [--config <config>]` at login
/// and again whenever it exits with a failure, logging to `log`.
pub fn plist_text(exe: &Path, config: Option<&Path>, log: &Path) -> String {
    let mut args = vec![exe.to_string_lossy().into_owned(), "serve".to_owned()];
    if let Some(config) = config {
        args.push("--config".to_owned());
        args.push(config.to_string_lossy().into_owned());
    }
    let args: String = args
        .iter()
        .map(|a| format!("    <string>{}</string>\n", xml_escape(a)))
        .collect();
    let log = xml_escape(&log.to_string_lossy());
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <!DOCTYPE plist PUBLIC \"-//Apple//DTD PLIST 1.0//EN\" \
         \"http://www.apple.com/DTDs/PropertyList-1.0.dtd\">\n\
         <plist version=\"1.0\">\n\
         <dict>\n\
         \x20 <key>Label</key>\n\
         \x20 <string>{AGENT_LABEL}</string>\n\
         \x20 <key>ProgramArguments</key>\n\
         \x20 <array>\n\
         {args}\
         \x20 </array>\n\
         \x20 <key>RunAtLoad</key>\n\
         \x20 <true/>\n\
         \x20 <key>KeepAlive</key>\n\
         \x20 <dict>\n\
         \x20   <key>SuccessfulExit</key>\n\
         \x20   <false/>\n\
         \x20 </dict>\n\
         \x20 <key>StandardErrorPath</key>\n\
         \x20 <string>{log}</string>\n\
         </dict>\n\
         </plist>\n"
    )
}

fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn install(manager: Manager, config: Option<PathBuf>, no_start: bool) -> Result<(), CliError> {
    let exe = program_path()?;
    if matches!(manager, Manager::Systemd) && !systemd_can_run(&exe) {
        return Err(CliError::new(format!(
            "systemd cannot run a program whose path has quotes, backslashes or control \
             characters: {exe:?}; move thv-actor elsewhere and install again"
        )));
    }
    let exe = PathBuf::from(exe);
    let config = config.map(|c| absolute_config(&c)).transpose()?;

    // Write (or update) the file the manager reads.
    let home = thv_actors::home_dir()?;
    let (path, text) = match manager {
        Manager::Systemd => (unit_path(&home), unit_text(&exe, config.as_deref())),
        Manager::Launchd => {
            let log = home.join("Library").join("Logs").join("thv-actor.log");
            (agent_path(&home), plist_text(&exe, config.as_deref(), &log))
        }
    };
    let existed = path.exists();
    create_dir(path.parent().expect("a unit path has a parent"))?;
    write_atomically(&path, &text)?;
    eprintln!(
        "{} {}",
        if existed { "updated" } else { "wrote" },
        path.display()
    );

    if no_start {
        match manager {
            Manager::Systemd => eprintln!("not started; to start it, run: {START_HINT}"),
            Manager::Launchd => {
                eprintln!(
                    "not started; to start it, run: launchctl load -w {}",
                    path.display()
                )
            }
        }
        return Ok(());
    }

    match manager {
        Manager::Systemd => start_unit(),
        // TODO: run the launchd path in a test (needs a macOS runner)
        Manager::Launchd => {
            if existed {
                // A loaded agent keeps its old definition until unloaded.
                let _ = run_tool("launchctl", &["unload", &path.to_string_lossy()]);
            }
            run_tool("launchctl", &["load", "-w", &path.to_string_lossy()])
                .map_err(CliError::new)?;
            eprintln!("loaded {AGENT_LABEL}; its log: ~/Library/Logs/thv-actor.log");
            Ok(())
        }
    }
}

/// Reloads the user manager, then enables and (re)starts the unit; only an
/// unreachable manager is tolerated.
fn start_unit() -> Result<(), CliError> {
    if let Err(reason) = systemctl(&["daemon-reload"]) {
        eprintln!(
            "systemctl --user is not available here ({reason}); the unit is written: \
             to start it where your user manager runs, run: {START_HINT}"
        );
        return Ok(());
    }

    systemctl(&["enable", UNIT]).map_err(CliError::new)?;
    // restart, not start: an update must replace a running old serve.
    systemctl(&["restart", UNIT]).map_err(CliError::new)?;
    eprintln!(
        "enabled and started {UNIT}; its logs: journalctl --user -u {UNIT}; it runs while \
         you are logged in (`loginctl enable-linger` keeps it running without a login)"
    );
    Ok(())
}

fn uninstall(manager: Manager) -> Result<(), CliError> {
    let home = thv_actors::home_dir()?;
    match manager {
        Manager::Systemd => uninstall_unit(&unit_path(&home)),
        Manager::Launchd => {
            let path = agent_path(&home);
            if !path.exists() {
                eprintln!("no agent at {}; nothing to remove", path.display());
                return Ok(());
            }
            if let Err(reason) = run_tool("launchctl", &["unload", "-w", &path.to_string_lossy()]) {
                eprintln!("warning: {reason}; removing the agent file anyway");
            }
            remove(&path)?;
            eprintln!("removed {}", path.display());
            Ok(())
        }
    }
}

fn uninstall_unit(path: &Path) -> Result<(), CliError> {
    // What `systemctl --user enable` made; it would dangle once the unit is gone.
    let wants = path.with_file_name("default.target.wants").join(UNIT);
    let enabled = wants
        .symlink_metadata()
        .is_ok_and(|m| m.file_type().is_symlink());
    if !path.exists() && !enabled {
        eprintln!("no unit at {}; nothing to remove", path.display());
        return Ok(());
    }

    // Stop and disable through the manager when there is one.
    let reachable = systemctl(&["daemon-reload"]);
    if reachable.is_ok() {
        if let Err(reason) = systemctl(&["disable", "--now", UNIT]) {
            eprintln!("warning: {reason}; removing the unit file anyway");
        }
    }

    if enabled {
        remove(&wants)?;
    }
    if path.exists() {
        remove(path)?;
    }
    eprintln!("removed {}", path.display());

    match reachable {
        Ok(()) => systemctl(&["daemon-reload"]).map_err(CliError::new),
        Err(reason) => {
            eprintln!(
                "systemctl --user is not available here ({reason}); if {UNIT} runs under your \
                 user manager, stop it there: systemctl --user stop {UNIT} && \
                 systemctl --user daemon-reload"
            );
            Ok(())
        }
    }
}

/// `$XDG_CONFIG_HOME/systemd/user/thv-actor.service` (when absolute), else
/// under `~/.config`.
fn unit_path(home: &Path) -> PathBuf {
    let config = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .filter(|dir| dir.is_absolute())
        .unwrap_or_else(|| home.join(".config"));
    config.join("systemd").join("user").join(UNIT)
}

fn agent_path(home: &Path) -> PathBuf {
    home.join("Library")
        .join("LaunchAgents")
        .join(format!("{AGENT_LABEL}.plist"))
}

/// The config path as the service will need it: absolute, existing, UTF-8
/// (a unit file is text).
fn absolute_config(config: &Path) -> Result<PathBuf, CliError> {
    let path = fs::canonicalize(config)
        .map_err(|e| CliError::new(format!("cannot use config file {}: {e}", config.display())))?;
    if path.to_str().is_none() {
        return Err(CliError::new(format!(
            "the config path {} is not UTF-8, which a unit file cannot hold",
            path.display()
        )));
    }
    Ok(path)
}

fn create_dir(dir: &Path) -> Result<(), CliError> {
    fs::create_dir_all(dir)
        .map_err(|e| CliError::new(format!("cannot create directory {}: {e}", dir.display())))
}

fn remove(path: &Path) -> Result<(), CliError> {
    fs::remove_file(path)
        .map_err(|e| CliError::new(format!("cannot remove {}: {e}", path.display())))
}

fn systemctl(args: &[&str]) -> Result<(), String> {
    let mut all = vec!["--user"];
    all.extend_from_slice(args);
    run_tool("systemctl", &all)
}

/// Runs `program args...` to completion; on failure, why, in one line.
fn run_tool(program: &str, args: &[&str]) -> Result<(), String> {
    let line = format!("{program} {}", args.join(" "));
    let output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {line}: {e}"))?;
    tracing::debug!(command = %line, status = %output.status, "ran service manager command");
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let detail = stderr
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("no message");
    Err(format!(
        "{line} failed ({}): {}",
        output.status,
        detail.trim()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_paths_stay_bare_in_exec_start() {
        let text = unit_text(Path::new("/usr/bin/thv-actor"), None);
        assert!(
            text.contains("\nExecStart=/usr/bin/thv-actor serve\n"),
            "{text}"
        );
        assert!(text.contains("\nRestart=on-failure\n"));
    }

    #[test]
    fn quotes_spaces_and_escapes_specifiers_and_variables() {
        let exe = Path::new("/opt/my $tools/thv-actor");
        let config = Path::new("/home/a/100%/$HOME/\"x\"\\y.toml");
        let text = unit_text(exe, Some(config));
        assert!(
            text.contains(
                "\nExecStart=\"/opt/my $tools/thv-actor\" serve --config \
                 \"/home/a/100%%/$$HOME/\\\"x\\\"\\\\y.toml\"\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn plain_words_with_specifiers_are_doubled_unquoted() {
        assert_eq!(systemd_word("/a/%h/$X", true), "/a/%%h/$$X");
        assert_eq!(systemd_word("/a/%h/$X", false), "/a/%%h/$X");
        assert_eq!(systemd_word("", true), "\"\"");
    }

    #[test]
    fn plist_escapes_xml_and_lists_every_argument() {
        let text = plist_text(
            Path::new("/Apps/A&B/thv-actor"),
            Some(Path::new("/c<1>.toml")),
            Path::new("/l.log"),
        );
        assert!(text.contains("<string>/Apps/A&amp;B/thv-actor</string>\n    <string>serve</string>\n    <string>--config</string>\n    <string>/c&lt;1&gt;.toml</string>"), "{text}");
        assert!(text.contains("<key>RunAtLoad</key>\n  <true/>"));
        assert!(text.contains("<key>KeepAlive</key>"));
    }
}
