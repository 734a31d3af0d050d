//! Starting `thv-actor serve` in a private environment: [`ThvEnv`] (the
//! HOME, state directory and keystore a `thv-actor` process sees), a
//! [`Sandbox`] that owns such an environment and deletes the keys of the
//! workloads it named, the one [`Serve`] driver, and `[[workloads]]`
//! config blocks.
//!
//! Two layouts exist because the tests need both: [`Sandbox::new`] keeps
//! the state directory apart from HOME (`THV_ACTOR_STATE_DIR`), and
//! [`Sandbox::in_home`] (and [`Serve::start`]) leave every path at its
//! default under HOME, which is what `thv-actor bridge` needs to find
//! serve's state from a client's reduced environment.

use std::cell::RefCell;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::WAIT;

/// The environment of a `thv-actor` process: HOME, where config and state
/// go, and the keystore.
#[derive(Clone, Debug)]
pub struct ThvEnv {
    pub home: PathBuf,
    pub keystore: String,
    /// `THV_ACTOR_STATE_DIR`; `None` leaves the default under HOME.
    pub state_dir: Option<PathBuf>,
    /// `XDG_CONFIG_HOME`; `None` leaves the default under HOME.
    pub config_home: Option<PathBuf>,
}

impl ThvEnv {
    /// Everything at its default under `home`.
    pub fn in_home(home: &Path, keystore: &str) -> ThvEnv {
        ThvEnv {
            home: home.to_owned(),
            keystore: keystore.to_owned(),
            state_dir: None,
            config_home: None,
        }
    }

    /// `thv-actor <args>` in this environment (no `RUST_LOG`, no
    /// `THV_ACTOR_CONFIG`, stdin closed).
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(super::bin());
        cmd.args(args)
            .env("HOME", &self.home)
            .env("THV_ACTOR_KEYSTORE", &self.keystore)
            .env_remove("THV_ACTOR_CONFIG")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null());
        match &self.state_dir {
            Some(dir) => cmd.env("THV_ACTOR_STATE_DIR", dir),
            None => cmd.env_remove("THV_ACTOR_STATE_DIR"),
        };
        match &self.config_home {
            Some(dir) => cmd.env("XDG_CONFIG_HOME", dir),
            None => cmd.env_remove("XDG_CONFIG_HOME"),
        };
        cmd
    }

    /// Runs `thv-actor <args>` to completion, bounded by [`WAIT`].
    pub fn run(&self, args: &[&str]) -> Output {
        super::run_bounded(self.cmd(args), WAIT)
    }

    /// The current key of `workload`, from `key show`.
    pub fn key(&self, workload: &str) -> String {
        let out = self.run(&["key", "show", workload]);
        super::ok(&out);
        let key = super::stdout(&out).trim_end().to_owned();
        assert_eq!(key.len(), 43, "key show printed something else");
        key
    }

    /// serve's state directory (where its control socket is).
    pub fn state(&self) -> PathBuf {
        self.state_dir
            .clone()
            .unwrap_or_else(|| self.home.join(".local/state/thv-actor"))
    }
}

/// A private directory with a [`ThvEnv`] in it, and the workload names
/// made for the test; their keys are deleted when it is dropped.
pub struct Sandbox {
    pub dir: tempfile::TempDir,
    pub keystore: &'static str,
    pub env: ThvEnv,
    names: Mutex<Vec<String>>,
}

impl Sandbox {
    /// HOME at `<dir>/home` (with `XDG_CONFIG_HOME` in it) and the state
    /// directory at `<dir>/state`.
    pub fn new(keystore: &'static str) -> Sandbox {
        super::require_setup();
        let dir = tempfile::tempdir().unwrap();
        for sub in ["home/.config", "state"] {
            std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        }
        let env = ThvEnv {
            home: dir.path().join("home"),
            keystore: keystore.to_owned(),
            state_dir: Some(dir.path().join("state")),
            config_home: Some(dir.path().join("home/.config")),
        };
        Sandbox::with(dir, keystore, env)
    }

    /// HOME is the directory itself and every path is at its default, as
    /// `thv-actor bridge` started by an MCP client sees it.
    pub fn in_home(keystore: &'static str) -> Sandbox {
        super::require_setup();
        let dir = tempfile::tempdir().unwrap();
        let env = ThvEnv::in_home(dir.path(), keystore);
        Sandbox::with(dir, keystore, env)
    }

    fn with(dir: tempfile::TempDir, keystore: &'static str, env: ThvEnv) -> Sandbox {
        Sandbox {
            dir,
            keystore,
            env,
            names: Mutex::new(Vec::new()),
        }
    }

    pub fn home(&self) -> &Path {
        &self.env.home
    }

    pub fn state_dir(&self) -> PathBuf {
        self.env.state()
    }

    /// `name` in the sandbox's directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A workload name unique to this run, whose keys go at the end.
    pub fn name(&self, tag: &str) -> String {
        let name = super::unique(tag);
        self.track(&name);
        name
    }

    /// Deletes `name`'s keys at the end (for names not made by [`Sandbox::name`]).
    pub fn track(&self, name: &str) {
        self.names.lock().unwrap().push(name.to_owned());
    }

    /// Writes `text` to `config.toml` in the sandbox and returns its path.
    pub fn config(&self, text: &str) -> PathBuf {
        let path = self.path("config.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    /// `thv-actor <args>` in this sandbox.
    pub fn cmd(&self, args: &[&str]) -> Command {
        self.env.cmd(args)
    }

    /// Runs `thv-actor <args>` to completion, bounded by [`WAIT`].
    pub fn run(&self, args: &[&str]) -> Output {
        self.env.run(args)
    }

    /// The current key of `workload`, from `key show`.
    pub fn key(&self, workload: &str) -> String {
        self.env.key(workload)
    }

    /// `list --json`, parsed.
    pub fn list(&self) -> Vec<serde_json::Value> {
        let out = self.run(&["list", "--json"]);
        super::ok(&out);
        serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .expect("list --json prints JSON")
            .as_array()
            .expect("list --json prints an array")
            .clone()
    }

    /// Starts `thv-actor serve <args>` and waits for its `lines` workload lines.
    pub fn serve(&self, args: &[&str], lines: usize) -> Serve {
        self.serve_with(args, lines, &[])
    }

    /// Starts `thv-actor serve --config <config>` and waits until it has
    /// printed the line of every workload in `names`.
    pub fn serve_config(&self, config: &Path, names: &[&str]) -> Serve {
        let serve = self.serve(&["--config", config.to_str().unwrap()], names.len());
        for name in names {
            serve.url(name);
        }
        serve
    }

    /// [`Sandbox::serve`] with extra environment variables.
    pub fn serve_with(&self, args: &[&str], lines: usize, vars: &[(&str, &str)]) -> Serve {
        let serve = Serve::spawn(&self.env, args, vars, self.log_path());
        serve.wait_lines(lines);
        serve
    }

    /// Starts `thv-actor serve <args>` without waiting.
    pub fn spawn_serve(&self, args: &[&str]) -> Serve {
        Serve::spawn(&self.env, args, &[], self.log_path())
    }

    fn log_path(&self) -> PathBuf {
        static STARTS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = STARTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.path(&format!("serve-{n}.log"))
    }
}

impl AsRef<Path> for Sandbox {
    /// The sandbox's HOME.
    fn as_ref(&self) -> &Path {
        self.home()
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        for name in self.names.lock().unwrap().drain(..) {
            let mut cmd = self.cmd(&["key", "delete", &name]);
            cmd.stdout(Stdio::null()).stderr(Stdio::null());
            if let Ok(mut child) = cmd.spawn() {
                if super::wait_bounded(&mut child, Duration::from_secs(10)).is_none() {
                    let _ = child.kill();
                    let _ = child.wait();
                }
            }
        }
    }
}

/// A running `thv-actor serve`: the workload lines it printed on stdout
/// and its stderr (in a file, appended across restarts). Dropping it sends
/// SIGTERM, then SIGKILL after [`WAIT`].
pub struct Serve {
    child: Option<Child>,
    env: ThvEnv,
    args: Vec<String>,
    vars: Vec<(String, String)>,
    log: PathBuf,
    lines_rx: Receiver<String>,
    lines: RefCell<Vec<String>>,
}

impl Serve {
    /// Writes `config` to the default config file under `home`, starts
    /// `thv-actor serve` there (every path at its default, `RUST_LOG`
    /// `info,actix_server=warn` unless `vars` sets it) and waits for
    /// `expect` workload lines.
    pub fn start(
        home: &Path,
        keystore: &str,
        config: &str,
        expect: usize,
        vars: &[(&str, &str)],
    ) -> Serve {
        let cfg_dir = home.join(".config/thv-actor");
        std::fs::create_dir_all(&cfg_dir).unwrap();
        std::fs::write(cfg_dir.join("config.toml"), config).unwrap();

        let vars = [&[("RUST_LOG", "info,actix_server=warn")], vars].concat();
        let env = ThvEnv::in_home(home, keystore);
        let serve = Serve::spawn(&env, &[], &vars, home.join("serve.stderr"));
        serve.wait_lines(expect);
        serve
    }

    /// Starts `thv-actor serve <args>` in `env` with `vars` set, stderr
    /// appended to `log`, without waiting.
    pub fn spawn(env: &ThvEnv, args: &[&str], vars: &[(&str, &str)], log: PathBuf) -> Serve {
        let (_, lines_rx) = mpsc::channel();
        let mut serve = Serve {
            child: None,
            env: env.clone(),
            args: args.iter().map(|a| a.to_string()).collect(),
            vars: vars
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            log,
            lines_rx,
            lines: RefCell::new(Vec::new()),
        };
        serve.launch();
        serve
    }

    fn launch(&mut self) {
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        let mut cmd = self.env.cmd(&[&["serve"], &args[..]].concat());
        cmd.envs(self.vars.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(stderr);
        let mut child = cmd.spawn().expect("spawn thv-actor serve");
        self.lines_rx = super::line_reader(child.stdout.take().unwrap());
        self.lines.borrow_mut().clear();
        self.child = Some(child);
    }

    /// Starts the process again (after [`Serve::stop`] or [`Serve::kill`])
    /// and waits for `expect` workload lines.
    pub fn restart(&mut self, expect: usize) {
        assert!(self.child.is_none(), "serve still runs");
        self.launch();
        self.wait_lines(expect);
    }

    fn child(&self) -> &Child {
        self.child.as_ref().expect("serve runs")
    }

    pub fn pid(&self) -> u32 {
        self.child().id()
    }

    /// Everything serve wrote on stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits (bounded) until serve's stderr contains `needle`.
    pub fn wait_log(&self, needle: &str, limit: Duration) -> bool {
        super::eventually(limit, || self.stderr().contains(needle))
    }

    /// Waits until serve has printed `n` lines on stdout.
    pub fn wait_lines(&self, n: usize) {
        let deadline = Instant::now() + WAIT;
        while self.lines.borrow().len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines_rx.recv_timeout(left) {
                Ok(line) => self.lines.borrow_mut().push(line),
                Err(mpsc::RecvTimeoutError::Timeout) => panic!(
                    "serve printed {} of {n} lines within {WAIT:?}; stderr:\n{}",
                    self.lines.borrow().len(),
                    self.stderr()
                ),
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    std::thread::sleep(Duration::from_millis(200));
                    panic!(
                        "serve closed stdout after {} of {n} lines; stderr:\n{}",
                        self.lines.borrow().len(),
                        self.stderr()
                    )
                }
            }
        }
    }

    /// The printed lines.
    pub fn lines(&self) -> Vec<String> {
        self.lines.borrow().clone()
    }

    /// The URL serve printed for `workload` (`<name>  <url>  (...)`).
    pub fn url(&self, workload: &str) -> String {
        let lines = self.lines.borrow();
        let line = lines
            .iter()
            .find(|l| l.split_whitespace().next() == Some(workload))
            .unwrap_or_else(|| panic!("serve printed no line for {workload}: {lines:?}"));
        line.split_whitespace()
            .nth(1)
            .expect("a URL after the name")
            .to_owned()
    }

    /// The port of `workload`'s URL.
    pub fn port(&self, workload: &str) -> u16 {
        super::port_of(&self.url(workload))
    }

    /// The pids serve logged for `workload`'s MCP server processes
    /// ("mcp server process started workload=<w> pid=<n>").
    pub fn logged_pids(&self, workload: &str) -> Vec<u32> {
        let plain = super::strip_ansi(&self.stderr());
        let needle = format!("workload={workload} pid=");
        plain
            .lines()
            .filter(|l| l.contains("mcp server process started"))
            .filter_map(|l| l.split_once(&needle))
            .filter_map(|(_, rest)| rest.split_whitespace().next()?.parse().ok())
            .collect()
    }

    /// `thv-actor <args>` with this serve's environment, to completion.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.env.run(args)
    }

    /// The current key of `workload`.
    pub fn key(&self, workload: &str) -> String {
        self.env.key(workload)
    }

    /// Sends a control-socket command (`invalidate`, `fault-keystore`, ...)
    /// and returns the raw answer.
    pub fn control(&self, workload: &str, op: &str) -> String {
        use std::os::unix::net::UnixStream;
        let socket = self.env.state().join("control.sock");
        let mut stream = UnixStream::connect(&socket).expect("control socket");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        write!(
            stream,
            "POST /v1/workloads/{workload}/{op} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        stream.read_to_string(&mut out).unwrap();
        out
    }

    /// Sends `signal` to serve.
    pub fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill(2) on our own child's pid has no memory effects.
        let rc = unsafe { libc::kill(self.pid() as libc::pid_t, signal) };
        assert_eq!(rc, 0, "kill({signal})");
    }

    /// SIGTERM, then waits (bounded) for the exit; `None` when serve was
    /// not running.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        self.child.as_ref()?;
        self.signal(libc::SIGTERM);
        Some(self.wait_exit())
    }

    /// Waits (bounded) for serve to exit on its own.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("serve runs");
        match super::wait_bounded(&mut child, WAIT) {
            Some(status) => status,
            None => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "serve did not exit within {WAIT:?}; stderr:\n{}",
                    self.stderr()
                );
            }
        }
    }

    /// SIGKILL, as a crash would; returns once it is reaped.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: as in `signal`.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            if super::wait_bounded(&mut child, WAIT).is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

fn toml_str(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

/// A `[[workloads]]` block for a stdio server serve spawns.
pub fn stdio_workload(name: &str, argv: &[&str]) -> String {
    let argv: Vec<String> = argv.iter().map(|a| toml_str(a)).collect();
    format!(
        "[[workloads]]\nname = {}\ncommand = [{}]\n",
        toml_str(name),
        argv.join(", ")
    )
}

/// A `[[workloads]]` block for a streamable HTTP server at `url`.
pub fn url_workload(name: &str, url: &str) -> String {
    format!(
        "[[workloads]]\nname = {}\nurl = {}\ntransport = \"streamable-http\"\n",
        toml_str(name),
        toml_str(url)
    )
}

/// The built-in demo server as a workload's command.
pub fn demo_workload(name: &str) -> String {
    stdio_workload(name, &[super::bin(), "demo-server"])
}

/// A config of demo workloads, one per name.
pub fn demo_config(names: &[&str]) -> String {
    names.iter().map(|n| demo_workload(n) + "\n").collect()
}
