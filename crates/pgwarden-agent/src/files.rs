//! Rendering credentials into the files applications read, writing them atomically, and the
//! state file that lets a sidecar adopt the lease an init container fetched.

use nix::fcntl::{Flock, FlockArg};
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use pgwarden_client::Credential;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Placeholders a template may use.
const PLACEHOLDERS: [&str; 6] = [
    "username", "password", "host", "port", "database", "lease_id",
];

/// Built-in file formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// `PGUSER=… PGPASSWORD=… PGHOST=… PGPORT=… PGDATABASE=…`, one per line.
    Env,
    /// A JSON object.
    Json,
    /// libpq's `.pgpass` line.
    Pgpass,
    /// `postgresql://user:pass@host:port/db`.
    Url,
}

/// A template file, read and checked once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    text: String,
}

impl Template {
    /// Reads `path` and checks every placeholder is known and closed.
    pub fn load(path: &Path) -> Result<Template, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("template {}: {e}", path.display()))?;
        let checked = if pgwarden_core::template::has_unclosed(&text) {
            Err("unclosed {{".to_string())
        } else {
            substitute(&text, |_| Ok(String::new()))
        };
        checked.map_err(|e| format!("template {}: {e}", path.display()))?;
        Ok(Template { text })
    }

    /// The template filled with `c`.
    pub fn render(&self, c: &Credential) -> Result<String, String> {
        substitute(&self.text, |name| Ok(field(c, name)))
    }
}

/// Fills the template's placeholders with `value`, refusing unknown ones.
fn substitute(
    text: &str,
    value: impl Fn(&str) -> Result<String, String>,
) -> Result<String, String> {
    pgwarden_core::template::substitute(text, |name| {
        if PLACEHOLDERS.contains(&name) {
            value(name)
        } else {
            Err(format!(
                "unknown placeholder {{{{{name}}}}}; known: {}",
                PLACEHOLDERS.join(", ")
            ))
        }
    })
}

/// What goes into a file: a built-in format or a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// A built-in format.
    Format(Format),
    /// A template read at load.
    Template(Template),
}

/// A file to write and what goes in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputFile {
    /// The file (mode 0600, replaced atomically).
    pub path: PathBuf,
    /// Its contents' form.
    pub output: Output,
}

fn field(c: &Credential, name: &str) -> String {
    match name {
        "username" => c.username.clone(),
        "password" => c.password.expose_secret().to_string(),
        "host" => c.host.clone(),
        "port" => c.port.to_string(),
        "database" => c.database.clone(),
        "lease_id" => c.lease_id.clone(),
        _ => String::new(),
    }
}

/// Escapes `:` and `\` as libpq's password file requires.
fn pgpass_escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace(':', "\\:")
}

/// The file's contents for credential `c`.
pub fn render(file: &OutputFile, c: &Credential) -> Result<String, String> {
    let pw = c.password.expose_secret();
    Ok(match &file.output {
        Output::Format(Format::Env) => format!(
            "PGUSER={}\nPGPASSWORD={pw}\nPGHOST={}\nPGPORT={}\nPGDATABASE={}\n",
            c.username, c.host, c.port, c.database
        ),
        Output::Format(Format::Json) => serde_json::json!({
            "username": c.username, "password": pw, "host": c.host, "port": c.port,
            "database": c.database, "lease_id": c.lease_id,
        })
        .to_string(),
        Output::Format(Format::Pgpass) => format!(
            "{}:{}:{}:{}:{}\n",
            pgpass_escape(&c.host),
            c.port,
            pgpass_escape(&c.database),
            pgpass_escape(&c.username),
            pgpass_escape(pw)
        ),
        Output::Format(Format::Url) => format!(
            "postgresql://{}:{}@{}:{}/{}\n",
            utf8_percent_encode(&c.username, NON_ALPHANUMERIC),
            utf8_percent_encode(pw, NON_ALPHANUMERIC),
            c.host,
            c.port,
            utf8_percent_encode(&c.database, NON_ALPHANUMERIC)
        ),
        Output::Template(template) => template.render(c)?,
    })
}

/// Replaces `path` with `contents` atomically (temporary file in the same directory, fsync,
/// rename, fsync of the directory), mode 0600: a reader sees the old file or the new one,
/// never a mix, and writes reach the disk in the order they were made.
pub fn write_atomically(path: &Path, contents: &str) -> Result<(), String> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = dir.join(format!(".pgwarden-{:016x}.tmp", rand::random::<u64>()));
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(contents.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("cannot write {}: {e}", path.display())
    })
}

/// What the agent remembers of a credential beside its files, to adopt the lease later.
#[derive(Serialize, Deserialize)]
struct State {
    path: String,
    lease_id: String,
    lease_duration_secs: u64,
    username: String,
    password: String,
    host: String,
    port: u16,
    database: String,
    /// Leases replaced by this one that may not have been revoked yet: revoked by the next
    /// agent that reads this state, should this one stop before it could.
    #[serde(default)]
    retired: Vec<String>,
}

/// What the state beside the files records.
pub struct Recorded {
    /// The credential the files hold, or are about to.
    pub credential: Credential,
    /// Leases it replaced that may still be alive.
    pub retired: Vec<String>,
}

/// Where the state of credential `path` lives: beside its first file.
pub fn state_path(first_file: &Path, path: &str) -> PathBuf {
    let dir = first_file.parent().unwrap_or(Path::new("."));
    let name: String = path
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    dir.join(format!(".pgwarden-lease-{name}.json"))
}

/// The exclusive lock one agent holds on the state at `state_file` (on a `.lock` file beside
/// it) while it keeps that credential: two agents writing one set of files would each record
/// a lease the other then overwrites, and leave it alive.
pub fn lock_state(state_file: &Path, path: &str) -> Result<Flock<std::fs::File>, String> {
    use std::os::unix::fs::OpenOptionsExt;
    let lock = state_file.with_extension("lock");
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&lock)
        .map_err(|e| format!("cannot write {}: {e}", lock.display()))?;
    Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(_, errno)| match errno {
        nix::errno::Errno::EWOULDBLOCK => format!(
            "another agent keeps credential {path:?} (it holds {}): run one agent per set of files",
            lock.display()
        ),
        other => format!("cannot lock {}: {other}", lock.display()),
    })
}

/// Records `c` as the credential of `path`, and `retired` as the leases it replaced that may
/// still be alive.
pub fn save_state(
    file: &Path,
    path: &str,
    c: &Credential,
    retired: &[String],
) -> Result<(), String> {
    let state = State {
        path: path.to_string(),
        lease_id: c.lease_id.clone(),
        lease_duration_secs: c.lease_duration.as_secs(),
        username: c.username.clone(),
        password: c.password.expose_secret().to_string(),
        host: c.host.clone(),
        port: c.port,
        database: c.database.clone(),
        retired: retired.to_vec(),
    };
    write_atomically(
        file,
        &serde_json::to_string(&state).expect("state serializes"),
    )
}

/// What is recorded for `path`, if anything.
pub fn load_state(file: &Path, path: &str) -> Option<Recorded> {
    let state: State = serde_json::from_str(&std::fs::read_to_string(file).ok()?).ok()?;
    (state.path == path).then(|| Recorded {
        credential: Credential {
            lease_id: state.lease_id,
            lease_duration: Duration::from_secs(state.lease_duration_secs),
            username: state.username,
            password: SecretString::from(state.password),
            host: state.host,
            port: state.port,
            database: state.database,
            hosts: Vec::new(),
        },
        retired: state.retired,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cred() -> Credential {
        Credential {
            lease_id: "database/creds/r/abc".into(),
            lease_duration: Duration::from_secs(60),
            username: "v-user".into(),
            password: SecretString::from("p:w\\d"),
            host: "db.internal".into(),
            port: 5433,
            database: "app db".into(),
            hosts: Vec::new(),
        }
    }

    fn file(format: Format) -> OutputFile {
        OutputFile {
            path: "x".into(),
            output: Output::Format(format),
        }
    }

    #[test]
    fn renders_every_format() {
        let c = cred();
        assert_eq!(
            render(&file(Format::Env), &c).unwrap(),
            "PGUSER=v-user\nPGPASSWORD=p:w\\d\nPGHOST=db.internal\nPGPORT=5433\nPGDATABASE=app db\n"
        );
        assert_eq!(
            render(&file(Format::Pgpass), &c).unwrap(),
            "db.internal:5433:app db:v-user:p\\:w\\\\d\n"
        );
        assert_eq!(
            render(&file(Format::Url), &c).unwrap(),
            "postgresql://v%2Duser:p%3Aw%5Cd@db.internal:5433/app%20db\n"
        );
        let json: serde_json::Value =
            serde_json::from_str(&render(&file(Format::Json), &c).unwrap()).unwrap();
        assert_eq!(json["port"], 5433);
        assert_eq!(json["password"], "p:w\\d");
    }

    #[test]
    fn templates_fill_known_placeholders_and_refuse_others() {
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path().join("t.tmpl");
        std::fs::write(&t, "user={{ username }} db={{database}}").unwrap();
        assert_eq!(
            Template::load(&t).unwrap().render(&cred()).unwrap(),
            "user=v-user db=app db"
        );
        std::fs::write(&t, "{{ secret }}").unwrap();
        assert_eq!(
            Template::load(&t).err().unwrap(),
            format!(
                "template {}: unknown placeholder {{{{secret}}}}; known: username, password, host, port, database, lease_id",
                t.display()
            )
        );
    }

    #[test]
    fn writes_are_atomic_and_private_and_state_round_trips() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("appdb.env");
        write_atomically(&f, "one").unwrap();
        write_atomically(&f, "two").unwrap();
        assert_eq!(std::fs::read_to_string(&f).unwrap(), "two");
        assert_eq!(
            std::fs::metadata(&f).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temporary files left"
        );
        let s = state_path(&f, "database/creds/appdb-user");
        assert_eq!(
            s,
            dir.path()
                .join(".pgwarden-lease-database_creds_appdb_user.json")
        );
        let retired = ["database/creds/r/old".to_string()];
        save_state(&s, "database/creds/appdb-user", &cred(), &retired).unwrap();
        let back = load_state(&s, "database/creds/appdb-user").unwrap();
        assert_eq!(
            (
                back.credential.lease_id.as_str(),
                back.credential.password.expose_secret()
            ),
            ("database/creds/r/abc", "p:w\\d")
        );
        assert_eq!(back.retired, retired);
        // A state written before leases were retired through it reads as retiring none.
        let mut older: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&s).unwrap()).unwrap();
        older.as_object_mut().unwrap().remove("retired");
        std::fs::write(&s, older.to_string()).unwrap();
        let back = load_state(&s, "database/creds/appdb-user").unwrap();
        assert!(back.retired.is_empty());
        assert!(load_state(&s, "database/creds/other").is_none());
    }
}
