//! Machines as values: where a host is, and what goes on it (files, directories, symlinks,
//! users, groups, systemd units, hooks).
//!
//! ```
//! use forjar::machine::{File, Machine, Unit, User};
//! use forjar::{mode, path};
//!
//! let mut web = Machine::ssh("web1", "10.0.0.5").tag("web");
//! let app = web.user(User::system("app").home(path!("/var/lib/app")));
//! web.file(
//!     path!("/etc/app/app.conf"),
//!     File::text("port = 8080\n").owner(&app).mode(mode!(0o640)),
//! );
//! web.unit(
//!     Unit::service("app")
//!         .description("the app")
//!         .exec_start("/usr/bin/python3 -m http.server 8080")
//!         .user(&app)
//!         .wanted_by("multi-user.target")
//!         .restart_on(path!("/etc/app/app.conf")),
//! );
//! ```
//!
//! Mistakes that can be known when the program compiles are compile errors: [`path!`] takes
//! only absolute, normal paths, [`mode!`] only octal literals, [`Unit::service`] and its
//! siblings write the unit suffix themselves, and an owner is a [`UserRef`], which only
//! [`Machine::user`] (or [`UserRef::existing`], for users the host has by other means) makes.
//! What can only be known at run time (two files on one path, a bad address) is reported, with
//! the caller's source location, when the program is planned.
//!
//! [`path!`]: crate::path
//! [`mode!`]: crate::mode

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::panic::Location;

use serde::Serialize;

use super::check::Check;
use super::manifest::{GroupSpec, HookSpec, UserSpec, check_path};
use super::secret::{Secret, SecretSpec};
use crate::derivation::OutputRef;
use crate::name::{InvalidValue, Name};

/// An absolute, normal path on a host. Made by [`path!`](crate::path) (checked when the program
/// compiles) or [`AbsPath::new`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AbsPath(String);

impl AbsPath {
    /// Checks `path` at run time.
    pub fn new(path: impl Into<String>) -> Result<AbsPath, InvalidValue> {
        let path = path.into();
        check_path(&path).map_err(|reason| InvalidValue::new("managed path", &path, reason))?;
        Ok(AbsPath(path))
    }

    /// For [`path!`](crate::path): fails the constant evaluation, so the program does not
    /// compile, unless `path` is absolute and normal.
    #[doc(hidden)]
    pub const fn check_literal(path: &str) {
        let b = path.as_bytes();
        if b.is_empty() || b[0] != b'/' {
            panic!("a managed path must be absolute, such as `/etc/app.conf`");
        }
        if b.len() == 1 {
            panic!("`/` itself cannot be managed");
        }
        // Each component: not empty, not `.` or `..`; no NUL.
        let mut start = 1;
        let mut i = 1;
        while i <= b.len() {
            if i == b.len() || b[i] == b'/' {
                let len = i - start;
                if len == 0 {
                    panic!("a managed path may not have an empty component or end in `/`");
                }
                if (len == 1 && b[start] == b'.')
                    || (len == 2 && b[start] == b'.' && b[start + 1] == b'.')
                {
                    panic!("a managed path may not have `.` or `..` components");
                }
                start = i + 1;
            } else if b[i] == 0 {
                panic!("a managed path may not hold a NUL byte");
            }
            i += 1;
        }
    }

    /// The path.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An absolute, normal host path, checked when the program compiles:
/// `path!("/etc/app.conf")`. A relative or unnormal path is a compile error.
#[macro_export]
macro_rules! path {
    ($path:literal) => {{
        const _: () = $crate::machine::AbsPath::check_literal($path);
        $crate::machine::AbsPath::__literal($path)
    }};
}

impl AbsPath {
    /// For [`path!`](crate::path), after the check.
    #[doc(hidden)]
    pub fn __literal(path: &'static str) -> AbsPath {
        AbsPath(path.to_string())
    }
}

/// Permission bits, `0o0000` to `0o7777`. Made by [`mode!`](crate::mode), which takes only an
/// octal literal (`mode!(644)` is a compile error: it would mean `0o1204`), or
/// [`Mode::new`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mode(u32);

impl Mode {
    /// Checks `bits` at run time.
    pub fn new(bits: u32) -> Result<Mode, InvalidValue> {
        if bits > 0o7777 {
            return Err(InvalidValue::new(
                "mode",
                format!("{bits:#o}"),
                "it has bits beyond 0o7777; a mode is permission bits such as 0o644",
            ));
        }
        Ok(Mode(bits))
    }

    /// For [`mode!`](crate::mode): fails the constant evaluation unless the literal's text is
    /// octal (`0o…`) and at most `0o7777`.
    #[doc(hidden)]
    pub const fn check_literal(text: &str, bits: u32) -> Mode {
        let b = text.as_bytes();
        if b.len() < 3 || b[0] != b'0' || b[1] != b'o' {
            panic!("a mode must be an octal literal such as `0o644`; `644` would be decimal");
        }
        if bits > 0o7777 {
            panic!("a mode has at most the bits of 0o7777");
        }
        Mode(bits)
    }

    /// The bits.
    pub fn bits(self) -> u32 {
        self.0
    }
}

/// Permission bits from an octal literal, checked when the program compiles: `mode!(0o640)`.
#[macro_export]
macro_rules! mode {
    ($bits:literal) => {{
        const MODE: $crate::machine::Mode =
            $crate::machine::Mode::check_literal(stringify!($bits), $bits);
        MODE
    }};
}

/// A user that files and units may name: one the machine declares ([`Machine::user`]) or one
/// the host has by other means ([`UserRef::existing`], [`UserRef::root`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRef {
    name: String,
    group: String,
}

impl UserRef {
    /// `root`.
    pub fn root() -> UserRef {
        UserRef::existing("root", "root")
    }

    /// A user the host has without this program (a distribution's `www-data`), with its primary
    /// group.
    pub fn existing(name: &str, group: &str) -> UserRef {
        UserRef {
            name: name.to_string(),
            group: group.to_string(),
        }
    }

    /// The user's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The user's primary group.
    pub fn group(&self) -> GroupRef {
        GroupRef(self.group.clone())
    }
}

/// A group that files may name: one the machine declares ([`Machine::group`]), a declared user's
/// primary group ([`UserRef::group`]), or [`GroupRef::existing`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupRef(String);

impl GroupRef {
    /// `root`.
    pub fn root() -> GroupRef {
        GroupRef("root".into())
    }

    /// A group the host has without this program.
    pub fn existing(name: &str) -> GroupRef {
        GroupRef(name.to_string())
    }

    /// The group's name.
    pub fn name(&self) -> &str {
        &self.0
    }
}

/// A user to create.
#[derive(Debug, Clone)]
pub struct User {
    name: String,
    spec: UserSpec,
}

impl User {
    /// A system user with a group of its own name and no login shell.
    pub fn system(name: &str) -> User {
        User {
            name: name.to_string(),
            spec: UserSpec {
                system: true,
                uid: None,
                group: name.to_string(),
                groups: BTreeSet::new(),
                home: None,
                shell: Some("/usr/sbin/nologin".into()),
            },
        }
    }

    /// A normal (login) user with a group of its own name and `/bin/bash`.
    pub fn normal(name: &str) -> User {
        User {
            spec: UserSpec {
                system: false,
                shell: Some("/bin/bash".into()),
                home: Some(format!("/home/{name}")),
                ..User::system(name).spec
            },
            name: name.to_string(),
        }
    }

    /// A fixed user id.
    pub fn uid(mut self, uid: u32) -> User {
        self.spec.uid = Some(uid);
        self
    }

    /// The home directory, created with the user.
    pub fn home(mut self, home: AbsPath) -> User {
        self.spec.home = Some(home.0);
        self
    }

    /// The login shell.
    pub fn shell(mut self, shell: AbsPath) -> User {
        self.spec.shell = Some(shell.0);
        self
    }

    /// The primary group, instead of a group of the user's own name.
    pub fn primary_group(mut self, group: &GroupRef) -> User {
        self.spec.group = group.0.clone();
        self
    }

    /// A supplementary group.
    pub fn member_of(mut self, group: &GroupRef) -> User {
        self.spec.groups.insert(group.0.clone());
        self
    }
}

/// A group to create.
#[derive(Debug, Clone)]
pub struct Group {
    name: String,
    spec: GroupSpec,
}

impl Group {
    /// A system group.
    pub fn system(name: &str) -> Group {
        Group {
            name: name.to_string(),
            spec: GroupSpec {
                system: true,
                gid: None,
            },
        }
    }

    /// A fixed group id.
    pub fn gid(mut self, gid: u32) -> Group {
        self.spec.gid = Some(gid);
        self
    }
}

/// Where a file's bytes come from.
#[derive(Debug, Clone)]
pub(crate) enum Content {
    /// Bytes known when the program runs.
    Bytes(Vec<u8>),
    /// A derivation output, or a file inside one.
    Output {
        output: OutputRef,
        path: Option<String>,
    },
    /// A value that could not be rendered; reported when planning.
    Invalid(String),
}

/// A regular file on a host.
#[derive(Debug, Clone)]
pub struct File {
    pub(crate) content: Content,
    pub(crate) owner: String,
    pub(crate) group: String,
    pub(crate) mode: Mode,
}

impl File {
    fn of(content: Content) -> File {
        File {
            content,
            owner: "root".into(),
            group: "root".into(),
            mode: Mode(0o644),
        }
    }

    /// A file holding `text`.
    pub fn text(text: impl Into<String>) -> File {
        File::of(Content::Bytes(text.into().into_bytes()))
    }

    /// A file holding `bytes`.
    pub fn bytes(bytes: impl Into<Vec<u8>>) -> File {
        File::of(Content::Bytes(bytes.into()))
    }

    /// A file holding `value` rendered as TOML.
    pub fn toml(value: &impl Serialize) -> File {
        File::of(match toml::to_string(value) {
            Ok(text) => Content::Bytes(text.into_bytes()),
            Err(e) => Content::Invalid(format!("the value cannot be rendered as TOML: {e}")),
        })
    }

    /// A file holding `value` rendered as JSON.
    pub fn json(value: &impl Serialize) -> File {
        File::of(match serde_json::to_string_pretty(value) {
            Ok(text) => Content::Bytes((text + "\n").into_bytes()),
            Err(e) => Content::Invalid(format!("the value cannot be rendered as JSON: {e}")),
        })
    }

    /// A file holding a derivation's output, which must be a file.
    pub fn output(output: impl Into<OutputRef>) -> File {
        File::of(Content::Output {
            output: output.into(),
            path: None,
        })
    }

    /// A file holding the file at `path` (relative, such as `bin/hello`) inside a derivation's
    /// output directory.
    pub fn output_file(output: impl Into<OutputRef>, path: &str) -> File {
        File::of(Content::Output {
            output: output.into(),
            path: Some(path.to_string()),
        })
    }

    /// The owner (default `root`).
    pub fn owner(mut self, user: &UserRef) -> File {
        self.owner = user.name.clone();
        self
    }

    /// The group (default `root`).
    pub fn group(mut self, group: &GroupRef) -> File {
        self.group = group.0.clone();
        self
    }

    /// The permission bits (default `0o644`).
    pub fn mode(mut self, mode: Mode) -> File {
        self.mode = mode;
        self
    }
}

/// A managed path and what goes there.
#[derive(Debug, Clone)]
pub(crate) enum Entry {
    File(File),
    Directory {
        owner: String,
        group: String,
        mode: Mode,
    },
    Symlink(String),
}

/// What a service does when it exits (`Restart=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restart {
    /// `no`.
    No,
    /// `on-failure`.
    OnFailure,
    /// `always`.
    Always,
}

/// How a service's start is judged (`Type=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceType {
    /// `simple`: started once forked.
    Simple,
    /// `exec`: started once its program was executed.
    Exec,
    /// `oneshot`: started once it exited successfully.
    Oneshot,
    /// `notify`: started once it says so.
    Notify,
    /// `forking`.
    Forking,
}

/// A systemd unit: its common keys typed, any other key through [`Unit::set`].
#[derive(Debug, Clone)]
pub struct Unit {
    pub(crate) name: String,
    unit: Vec<(String, String)>,
    service: Vec<(String, String)>,
    install: Vec<(String, String)>,
    extra: BTreeMap<String, Vec<(String, String)>>,
    pub(crate) enable: bool,
    pub(crate) start: bool,
    pub(crate) reload: bool,
    pub(crate) triggers: Vec<AbsPath>,
    /// Provided by the host's packages: forjar writes no file for it and does not enable,
    /// start or stop it; it only restarts it when a trigger changes.
    pub(crate) provided: bool,
    pub(crate) checks: Vec<Check>,
}

impl Unit {
    fn named(name: String) -> Unit {
        Unit {
            name,
            unit: Vec::new(),
            service: Vec::new(),
            install: Vec::new(),
            extra: BTreeMap::new(),
            enable: true,
            start: true,
            reload: false,
            triggers: Vec::new(),
            provided: false,
            checks: Vec::new(),
        }
    }

    /// A unit the host already has (from its packages), named with its suffix
    /// (`ssh.service`): forjar writes no file for it and never enables, starts or stops it,
    /// but restarts it when a file named by [`Unit::restart_on`] changes — also when that
    /// change is rolled back, or the unit leaves the program — and runs its checks.
    ///
    /// ```
    /// use forjar::machine::{Check, File, Machine, Unit};
    /// use forjar::path;
    ///
    /// let mut host = Machine::ssh("web1", "10.0.0.5");
    /// host.file(path!("/etc/ssh/sshd_config.d/port.conf"), File::text("Port 22\n"))
    ///     .unit(Unit::existing("ssh.service")
    ///         .restart_on(path!("/etc/ssh/sshd_config.d/port.conf"))
    ///         .check(Check::tcp("127.0.0.1", 22)));
    /// ```
    pub fn existing(name: &str) -> Unit {
        let mut unit = Unit::named(name.to_string());
        unit.provided = true;
        unit.enable = false;
        unit
    }

    /// A health check of this unit, run after every activation that leaves it started;
    /// a check that fails rolls the activation back.
    pub fn check(mut self, check: Check) -> Unit {
        self.checks.push(check);
        self
    }

    /// `NAME.service`: enabled and started unless told otherwise.
    pub fn service(name: &str) -> Unit {
        let mut unit = Unit::named(format!("{name}.service"));
        unit.service.push(("Type".into(), "exec".into()));
        unit
    }

    /// `NAME.timer`.
    pub fn timer(name: &str) -> Unit {
        Unit::named(format!("{name}.timer"))
    }

    /// `NAME.socket`.
    pub fn socket(name: &str) -> Unit {
        Unit::named(format!("{name}.socket"))
    }

    /// `NAME.target`.
    pub fn target(name: &str) -> Unit {
        Unit::named(format!("{name}.target"))
    }

    /// The unit's name, with its suffix.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn service_key(mut self, key: &str, value: impl Into<String>) -> Unit {
        self.service.retain(|(k, _)| k != key);
        self.service.push((key.into(), value.into()));
        self
    }

    /// `Description=`.
    pub fn description(mut self, text: &str) -> Unit {
        self.unit.push(("Description".into(), text.into()));
        self
    }

    /// `After=`.
    pub fn after(mut self, unit: &str) -> Unit {
        self.unit.push(("After".into(), unit.into()));
        self
    }

    /// `Wants=`.
    pub fn wants(mut self, unit: &str) -> Unit {
        self.unit.push(("Wants".into(), unit.into()));
        self
    }

    /// `Requires=`.
    pub fn requires(mut self, unit: &str) -> Unit {
        self.unit.push(("Requires".into(), unit.into()));
        self
    }

    /// `ExecStart=`.
    pub fn exec_start(self, command: &str) -> Unit {
        self.service_key("ExecStart", command)
    }

    /// `ExecReload=`; the unit is then reloaded, not restarted, when it changes.
    pub fn exec_reload(mut self, command: &str) -> Unit {
        self.reload = true;
        self.service_key("ExecReload", command)
    }

    /// `Type=` (default `exec`, so that a program that cannot be started fails the start).
    pub fn service_type(self, kind: ServiceType) -> Unit {
        let value = match kind {
            ServiceType::Simple => "simple",
            ServiceType::Exec => "exec",
            ServiceType::Oneshot => "oneshot",
            ServiceType::Notify => "notify",
            ServiceType::Forking => "forking",
        };
        self.service_key("Type", value)
    }

    /// `User=` and `Group=` (the user's primary group).
    pub fn user(self, user: &UserRef) -> Unit {
        let group = user.group.clone();
        self.service_key("User", user.name.clone())
            .service_key("Group", group)
    }

    /// `WorkingDirectory=`.
    pub fn working_directory(self, dir: AbsPath) -> Unit {
        self.service_key("WorkingDirectory", dir.0)
    }

    /// `Environment=KEY=VALUE`.
    pub fn environment(mut self, key: &str, value: &str) -> Unit {
        self.service.push((
            "Environment".into(),
            format!(
                "\"{}={}\"",
                key,
                value.replace('\\', "\\\\").replace('"', "\\\"")
            ),
        ));
        self
    }

    /// `Restart=`.
    pub fn restart(self, restart: Restart) -> Unit {
        let value = match restart {
            Restart::No => "no",
            Restart::OnFailure => "on-failure",
            Restart::Always => "always",
        };
        self.service_key("Restart", value)
    }

    /// `WantedBy=` in `[Install]`.
    pub fn wanted_by(mut self, target: &str) -> Unit {
        self.install.push(("WantedBy".into(), target.into()));
        self
    }

    /// Any other key: `set("Service", "LimitNOFILE", "65536")`.
    pub fn set(mut self, section: &str, key: &str, value: &str) -> Unit {
        match section {
            "Unit" => self.unit.push((key.into(), value.into())),
            "Service" => self.service.push((key.into(), value.into())),
            "Install" => self.install.push((key.into(), value.into())),
            other => self
                .extra
                .entry(other.to_string())
                .or_default()
                .push((key.into(), value.into())),
        }
        self
    }

    /// Restart (or reload) the unit when the managed file or secret at `path` changes, as
    /// when its configuration does.
    pub fn restart_on(mut self, path: AbsPath) -> Unit {
        self.triggers.push(path);
        self
    }

    /// Not enabled at boot.
    pub fn disabled(mut self) -> Unit {
        self.enable = false;
        self
    }

    /// Installed but not started by activation.
    pub fn stopped(mut self) -> Unit {
        self.start = false;
        self
    }

    /// The unit file's text.
    pub fn render(&self) -> String {
        let mut text =
            String::from("# Written by forjar; changes are reverted by the next activation.\n");
        let mut section = |name: &str, keys: &[(String, String)]| {
            if !keys.is_empty() {
                let _ = writeln!(text, "\n[{name}]");
                for (k, v) in keys {
                    let _ = writeln!(text, "{k}={v}");
                }
            }
        };
        section("Unit", &self.unit);
        if self.name.ends_with(".service") {
            section("Service", &self.service);
        }
        for (name, keys) in &self.extra {
            section(name, keys);
        }
        section("Install", &self.install);
        text
    }
}

/// Where a machine is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The machine the program runs on.
    Local,
    /// A host reached over SSH.
    Ssh {
        /// Its address or ssh host alias.
        address: String,
        /// The login user (default: the ssh config's).
        user: Option<String>,
        /// The port (default: the ssh config's).
        port: Option<u16>,
        /// A jump host (`ProxyJump`).
        jump: Option<String>,
    },
}

/// A machine and everything that goes on it.
#[derive(Debug, Clone)]
pub struct Machine {
    pub(crate) name: String,
    pub(crate) target: Target,
    pub(crate) tags: BTreeSet<String>,
    pub(crate) paths: BTreeMap<AbsPath, Entry>,
    pub(crate) users: BTreeMap<String, UserSpec>,
    pub(crate) groups: BTreeMap<String, GroupSpec>,
    pub(crate) units: BTreeMap<String, Unit>,
    pub(crate) hooks: Vec<HookSpec>,
    pub(crate) checks: Vec<Check>,
    pub(crate) secrets: BTreeMap<AbsPath, (Secret, SecretSpec)>,
    /// How many of its newest generations the host keeps ([`Machine::keep_generations`]).
    pub(crate) keep_generations: Option<usize>,
    /// Mistakes found while it was described, reported when the program is planned.
    pub(crate) errors: Vec<String>,
    pub(crate) location: &'static Location<'static>,
}

impl Machine {
    #[track_caller]
    fn new(name: &str, target: Target) -> Machine {
        let mut errors = Vec::new();
        if let Err(e) = Name::new(name) {
            errors.push(format!("machine name `{name}`: {}", e.reason));
        }
        Machine {
            name: name.to_string(),
            target,
            tags: BTreeSet::new(),
            paths: BTreeMap::new(),
            users: BTreeMap::new(),
            groups: BTreeMap::new(),
            units: BTreeMap::new(),
            hooks: Vec::new(),
            checks: Vec::new(),
            secrets: BTreeMap::new(),
            keep_generations: None,
            errors,
            location: Location::caller(),
        }
    }

    /// A host reached over SSH at `address` (an address, a host name, or a `Host` alias of the
    /// user's ssh config).
    #[track_caller]
    pub fn ssh(name: &str, address: &str) -> Machine {
        let mut machine = Machine::new(
            name,
            Target::Ssh {
                address: address.to_string(),
                user: None,
                port: None,
                jump: None,
            },
        );
        if address.is_empty() || address.starts_with('-') || address.contains(char::is_whitespace) {
            machine.errors.push(format!(
                "address `{address}` is not a host name, address or ssh alias"
            ));
        }
        machine
    }

    /// The machine the program runs on, changed without SSH.
    #[track_caller]
    pub fn local(name: &str) -> Machine {
        Machine::new(name, Target::Local)
    }

    fn ssh_field(
        mut self,
        set: impl FnOnce(&mut Option<String>, &mut Option<u16>, &mut Option<String>),
    ) -> Machine {
        match &mut self.target {
            Target::Ssh {
                user, port, jump, ..
            } => set(user, port, jump),
            Target::Local => self
                .errors
                .push("a local machine has no SSH user, port or jump host".into()),
        }
        self
    }

    /// The SSH login user.
    pub fn ssh_user(self, name: &str) -> Machine {
        let name = name.to_string();
        self.ssh_field(|user, _, _| *user = Some(name))
    }

    /// The SSH port.
    pub fn port(self, number: u16) -> Machine {
        self.ssh_field(|_, port, _| *port = Some(number))
    }

    /// A jump host (`ssh -J`).
    pub fn jump(self, host: &str) -> Machine {
        let host = host.to_string();
        self.ssh_field(|_, _, jump| *jump = Some(host))
    }

    /// A tag, for selecting machines.
    pub fn tag(mut self, tag: &str) -> Machine {
        self.tags.insert(tag.to_string());
        self
    }

    /// Keeps the host's newest `count` generations: after an apply that leaves the host on a
    /// generation (activated or unchanged) and finds it with more, the older ones are deleted
    /// and the host's store collected, as `delete-generations --keep COUNT --on HOST` and
    /// `gc --on HOST` do. The generation the host runs is always kept; with `count` 1 there is
    /// none left to roll back to (`rollback`, `--rollback-all`), so 2 or more is usual. Without
    /// this setting a host keeps every generation until they are deleted by hand.
    pub fn keep_generations(mut self, count: usize) -> Machine {
        if count == 0 {
            self.errors.push(
                "keep_generations(0): a host keeps at least the generation it runs; \
                 give 1 or more (2 keeps one to roll back to)"
                    .into(),
            );
        }
        self.keep_generations = Some(count);
        self
    }

    /// How many of its newest generations the host keeps, if the program said.
    pub fn kept_generations(&self) -> Option<usize> {
        self.keep_generations
    }

    /// The machine's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The derivation outputs its files hold.
    pub(crate) fn file_outputs(&self) -> impl Iterator<Item = &OutputRef> {
        self.paths.values().filter_map(|entry| match entry {
            Entry::File(File {
                content: Content::Output { output, .. },
                ..
            }) => Some(output),
            _ => None,
        })
    }

    /// Where it is reached.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// Its tags.
    pub fn tags(&self) -> &BTreeSet<String> {
        &self.tags
    }

    #[track_caller]
    fn put(&mut self, path: AbsPath, entry: Entry) {
        if self.paths.contains_key(&path) || self.secrets.contains_key(&path) {
            self.errors.push(format!(
                "path `{}` is managed twice (the second at {})",
                path.0,
                Location::caller()
            ));
            return;
        }
        self.paths.insert(path, entry);
    }

    /// A file.
    #[track_caller]
    pub fn file(&mut self, path: AbsPath, file: File) -> &mut Machine {
        if let Content::Invalid(why) = &file.content {
            self.errors.push(format!("file `{}`: {why}", path.0));
        }
        self.put(path, Entry::File(file));
        self
    }

    /// A directory owned by `owner` and its primary group, with `mode`.
    #[track_caller]
    pub fn directory(&mut self, path: AbsPath, owner: &UserRef, mode: Mode) -> &mut Machine {
        self.put(
            path,
            Entry::Directory {
                owner: owner.name.clone(),
                group: owner.group.clone(),
                mode,
            },
        );
        self
    }

    /// A symbolic link at `path` pointing at `target`.
    #[track_caller]
    pub fn symlink(&mut self, path: AbsPath, target: &str) -> &mut Machine {
        if target.is_empty() || target.contains('\0') {
            self.errors.push(format!(
                "symlink `{}`: its target is empty or holds a NUL",
                path.0
            ));
        }
        self.put(path, Entry::Symlink(target.to_string()));
        self
    }

    /// A user, created if the host lacks it; the returned reference names it as an owner.
    #[track_caller]
    pub fn user(&mut self, user: User) -> UserRef {
        if let Err(e) = Name::new(user.name.as_str()) {
            self.errors
                .push(format!("user name `{}`: {}", user.name, e.reason));
        }
        let reference = UserRef {
            name: user.name.clone(),
            group: user.spec.group.clone(),
        };
        if self.users.insert(user.name.clone(), user.spec).is_some() {
            self.errors
                .push(format!("user `{}` is declared twice", user.name));
        }
        reference
    }

    /// A group, created if the host lacks it.
    #[track_caller]
    pub fn group(&mut self, group: Group) -> GroupRef {
        if self.groups.insert(group.name.clone(), group.spec).is_some() {
            self.errors
                .push(format!("group `{}` is declared twice", group.name));
        }
        GroupRef(group.name)
    }

    /// A systemd unit; its file goes to `/etc/systemd/system/`.
    #[track_caller]
    pub fn unit(&mut self, unit: Unit) -> &mut Machine {
        let (stem, suffix) = unit.name.rsplit_once('.').unwrap_or((&unit.name, ""));
        if unit.provided {
            const KINDS: [&str; 8] = [
                "service", "socket", "timer", "target", "mount", "path", "slice", "scope",
            ];
            if stem.is_empty() || unit.name.contains(['/', '\0']) || !KINDS.contains(&suffix) {
                self.errors.push(format!(
                    "unit `{}`: `Unit::existing` takes the unit's full name, such as \
                     `ssh.service` (one of the suffixes {})",
                    unit.name,
                    KINDS.map(|k| format!(".{k}")).join(", ")
                ));
            }
        } else if stem.is_empty()
            || stem.contains('/')
            || [".service", ".timer", ".socket", ".target"]
                .iter()
                .any(|s| stem.ends_with(s))
        {
            self.errors.push(format!(
                "unit name `{}`: give `Unit::{suffix}` the name without the `.{suffix}` suffix, \
                 which it adds, and without `/`",
                unit.name
            ));
        }
        if self.units.contains_key(&unit.name) {
            self.errors
                .push(format!("unit `{}` is declared twice", unit.name));
            return self;
        }
        for check in &unit.checks {
            if let Some(mistake) = check.mistake() {
                self.errors.push(format!("unit `{}`: {mistake}", unit.name));
            }
        }
        self.units.insert(unit.name.clone(), unit);
        self
    }

    /// A secret file at `path` on tmpfs (under `/run`), owned by `owner` and its group, with
    /// `mode`: its value is read from `secret` on the controller when `apply` runs, sent to
    /// the activator, and written before any unit starts — on every apply, so a host that
    /// restarted (tmpfs is empty then) gets it again. It is never in the store, a manifest, a
    /// plan or a log. A unit that reads it can [`Unit::restart_on`] its path.
    #[track_caller]
    pub fn secret(
        &mut self,
        path: AbsPath,
        secret: Secret,
        owner: &UserRef,
        mode: Mode,
    ) -> &mut Machine {
        if let Some(mistake) = secret.mistake() {
            self.errors
                .push(format!("secret `{}`: {mistake}", path.as_str()));
        }
        if !path.as_str().starts_with("/run/") {
            self.errors.push(format!(
                "secret `{}`: a secret goes on tmpfs, under `/run/` (e.g. `/run/{}`), so that                  it is never on disk",
                path.as_str(),
                path.as_str().trim_start_matches('/')
            ));
        }
        if self.paths.contains_key(&path) || self.secrets.contains_key(&path) {
            self.errors.push(format!(
                "path `{}` is managed twice (the second at {}, a secret)",
                path.as_str(),
                Location::caller()
            ));
            return self;
        }
        let spec = SecretSpec {
            owner: owner.name.clone(),
            group: owner.group.clone(),
            mode: mode.bits(),
        };
        self.secrets.insert(path, (secret, spec));
        self
    }

    /// The secrets, by path.
    pub(crate) fn secrets(&self) -> impl Iterator<Item = (&AbsPath, &Secret)> {
        self.secrets
            .iter()
            .map(|(path, (secret, _))| (path, secret))
    }

    /// A health check of the machine, run after every activation; a check that fails rolls the
    /// activation back.
    #[track_caller]
    pub fn check(&mut self, check: Check) -> &mut Machine {
        if let Some(mistake) = check.mistake() {
            self.errors.push(mistake);
        }
        self.checks.push(check);
        self
    }

    /// A command run with `/bin/sh -euc` at the end of every activation; a failure rolls the
    /// activation back.
    pub fn hook(&mut self, name: &str, script: &str) -> &mut Machine {
        self.hooks.push(HookSpec {
            name: name.to_string(),
            script: script.to_string(),
        });
        self
    }
}
