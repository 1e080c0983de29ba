//! Profiles of the shared files: `~/.aws/credentials` (AWS_SHARED_CREDENTIALS_FILE), with
//! `[name]` sections, and `~/.aws/config` (AWS_CONFIG_FILE), with `[default]` and
//! `[profile name]`. A profile's keys come from both files, the credentials file winning, as in
//! botocore. The profile is `--profile`, else AWS_PROFILE, else `default`.
//!
//! A profile yields static keys (`aws_access_key_id`, `aws_secret_access_key`,
//! `aws_session_token`) or web identity (`role_arn` + `web_identity_token_file`
//! [+ `role_session_name`]). Role chaining (`source_profile`), `credential_process` and SSO are
//! refused with a message rather than skipped.

use super::web_identity;
use super::{Credentials, Env};
use crate::Error;
use secrecy::SecretString;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// What a profile holds.
pub(super) enum Found {
    /// Static keys.
    Keys(Credentials),
    /// A role to assume with a web identity token.
    WebIdentity(web_identity::Config),
    /// No credentials; the text says what was searched, for the "tried" list.
    Nothing(String),
}

/// The keys of one profile, merged from both files.
type Profile = HashMap<String, String>;

/// The profile's credentials.
pub(super) fn credentials(env: &Env, explicit: Option<&str>) -> Result<Found, Error> {
    let (name, named) = profile_name(env, explicit);
    let files = Files::of(env);
    let searched = format!("profile {name:?} in {}", files.describe());
    let Some(profile) = files.load(&name)? else {
        if named {
            return Err(Error::ProfileNotFound {
                profile: name,
                files: files.describe(),
            });
        }
        return Ok(Found::Nothing(searched));
    };
    let incomplete = |problem: String| Error::Incomplete {
        source_name: format!("profile {name:?} in {}", files.describe()),
        problem,
    };
    let get = |key: &str| {
        profile
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    };

    if let (Some(role_arn), Some(token_file)) = (get("role_arn"), get("web_identity_token_file")) {
        return Ok(Found::WebIdentity(web_identity::Config::new(
            role_arn,
            expand_home(env, token_file),
            get("role_session_name"),
            env,
        )));
    }
    match (get("aws_access_key_id"), get("aws_secret_access_key")) {
        (Some(id), Some(secret)) => {
            let token = get("aws_session_token").map(SecretString::from);
            return Ok(Found::Keys(Credentials::new(
                id,
                SecretString::from(secret),
                token,
            )));
        }
        (Some(_), None) => {
            return Err(incomplete(
                "aws_access_key_id without aws_secret_access_key; add the secret key".into(),
            ));
        }
        (None, Some(_)) => {
            return Err(incomplete(
                "aws_secret_access_key without aws_access_key_id; add the key id".into(),
            ));
        }
        (None, None) => {}
    }
    let unsupported = [
        "source_profile",
        "credential_source",
        "credential_process",
        "sso_session",
        "sso_start_url",
    ];
    if let Some(key) = unsupported.iter().find(|key| get(key).is_some()) {
        return Err(incomplete(format!(
            "uses {key}, which pgwarden does not support; export the credentials (e.g. `aws \
             configure export-credentials --format env`) or use web identity"
        )));
    }
    Ok(Found::Nothing(searched))
}

/// The profile's `region`, if any.
pub(super) fn region(env: &Env, explicit: Option<&str>) -> Result<Option<String>, Error> {
    let (name, _) = profile_name(env, explicit);
    Ok(Files::of(env)
        .load(&name)?
        .and_then(|profile| profile.get("region").cloned())
        .filter(|region| !region.is_empty()))
}

/// The profile to use and whether someone named it (then it must exist).
fn profile_name(env: &Env, explicit: Option<&str>) -> (String, bool) {
    match explicit
        .or_else(|| env.get("AWS_PROFILE"))
        .or_else(|| env.get("AWS_DEFAULT_PROFILE"))
    {
        Some(name) => (name.to_string(), true),
        None => ("default".to_string(), false),
    }
}

/// The two shared files.
struct Files {
    credentials: PathBuf,
    config: PathBuf,
}

impl Files {
    fn of(env: &Env) -> Files {
        let path =
            |variable: &str, default: &str| expand_home(env, env.get(variable).unwrap_or(default));
        Files {
            credentials: path("AWS_SHARED_CREDENTIALS_FILE", "~/.aws/credentials"),
            config: path("AWS_CONFIG_FILE", "~/.aws/config"),
        }
    }

    fn describe(&self) -> String {
        format!(
            "{} and {}",
            self.credentials.display(),
            self.config.display()
        )
    }

    /// The profile merged from both files; `None` when neither has it.
    fn load(&self, name: &str) -> Result<Option<Profile>, Error> {
        let config = read(&self.config, "AWS config file (AWS_CONFIG_FILE)")?;
        let credentials = read(
            &self.credentials,
            "AWS credentials file (AWS_SHARED_CREDENTIALS_FILE)",
        )?;
        let mut from_config = parse(&config, true);
        let mut from_credentials = parse(&credentials, false);
        match (from_config.remove(name), from_credentials.remove(name)) {
            (None, None) => Ok(None),
            (config, credentials) => {
                let mut profile = config.unwrap_or_default();
                profile.extend(credentials.unwrap_or_default());
                Ok(Some(profile))
            }
        }
    }
}

/// The file's text; a missing file reads as empty.
fn read(path: &Path, what: &'static str) -> Result<String, Error> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(text),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(source) => Err(Error::ReadFile {
            what,
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// A leading `~/` replaced by HOME, as botocore expands these paths.
fn expand_home(env: &Env, path: &str) -> PathBuf {
    match (path.strip_prefix("~/"), env.get("HOME")) {
        (Some(rest), Some(home)) => Path::new(home).join(rest),
        _ => PathBuf::from(path),
    }
}

/// The profiles of an INI file. In the config file, `[profile x]` is profile `x` and
/// `[default]` (or `[profile default]`) is `default`; other sections (`sso-session`,
/// `services`) are skipped. Comments start with `#` or `;`; indented lines continue a nested
/// value (e.g. `s3 =` settings) and are ignored.
fn parse(text: &str, config_file: bool) -> HashMap<String, Profile> {
    let mut profiles: HashMap<String, Profile> = HashMap::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with(';') {
            continue;
        }
        if let Some(section) = trimmed
            .strip_prefix('[')
            .and_then(|rest| rest.strip_suffix(']'))
        {
            let section = section.trim();
            current = if !config_file || section == "default" {
                Some(section.to_string())
            } else {
                section
                    .strip_prefix("profile ")
                    .map(|name| name.trim().to_string())
            };
            if let Some(name) = &current {
                profiles.entry(name.clone()).or_default();
            }
            continue;
        }
        if line.starts_with([' ', '\t']) {
            continue;
        }
        if let (Some(name), Some((key, value))) = (&current, trimmed.split_once('=')) {
            let value = value.trim();
            // An inline comment needs whitespace before it, as in botocore.
            let value = value
                .split_once(" #")
                .or_else(|| value.split_once(" ;"))
                .map_or(value, |(value, _)| value.trim_end());
            if let Some(profile) = profiles.get_mut(name) {
                profile.insert(key.trim().to_string(), value.to_string());
            }
        }
    }
    profiles
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    struct Setup {
        _dir: tempfile::TempDir,
        env: Vec<(String, String)>,
    }

    fn setup(credentials: &str, config: &str) -> Setup {
        let dir = tempfile::tempdir().expect("temp dir");
        let aws = dir.path().join(".aws");
        std::fs::create_dir(&aws).expect("mkdir .aws");
        std::fs::write(aws.join("credentials"), credentials).expect("write credentials");
        std::fs::write(aws.join("config"), config).expect("write config");
        let home = dir.path().to_str().expect("utf-8 path").to_string();
        Setup {
            _dir: dir,
            env: vec![("HOME".into(), home)],
        }
    }

    fn env(setup: &Setup, extra: &[(&str, &str)]) -> Env {
        Env::from_pairs(
            setup
                .env
                .iter()
                .cloned()
                .chain(extra.iter().map(|(k, v)| (k.to_string(), v.to_string()))),
        )
    }

    fn keys(found: Found) -> Credentials {
        match found {
            Found::Keys(credentials) => credentials,
            Found::WebIdentity(_) => panic!("web identity, expected keys"),
            Found::Nothing(searched) => panic!("nothing found in {searched}"),
        }
    }

    const CREDENTIALS: &str = "\
# a comment
[default]
aws_access_key_id = AKIADEFAULT
aws_secret_access_key = default/secret+key

[dev]
aws_access_key_id=AKIADEV
aws_secret_access_key=dev-secret ; inline comment
aws_session_token = dev-token
";

    const CONFIG: &str = "\
[default]
region = eu-west-1
s3 =
  max_concurrent_requests = 20

[profile dev]
region = us-east-2

[profile web]
role_arn = arn:aws:iam::123456789012:role/app
web_identity_token_file = ~/token
role_session_name = from-profile

[profile chained]
role_arn = arn:aws:iam::123456789012:role/other
source_profile = dev

[sso-session corp]
sso_region = us-east-1
";

    #[test]
    fn default_profile_from_credentials_file() {
        let setup = setup(CREDENTIALS, CONFIG);
        let found = keys(credentials(&env(&setup, &[]), None).expect("valid"));
        assert_eq!(found.access_key_id(), "AKIADEFAULT");
        assert_eq!(
            found.secret_access_key().expose_secret(),
            "default/secret+key"
        );
        assert!(found.session_token().is_none());
        assert_eq!(
            region(&env(&setup, &[]), None).expect("valid").as_deref(),
            Some("eu-west-1")
        );
    }

    #[test]
    fn aws_profile_picks_a_named_profile() {
        let setup = setup(CREDENTIALS, CONFIG);
        let env = env(&setup, &[("AWS_PROFILE", "dev")]);
        let found = keys(credentials(&env, None).expect("valid"));
        assert_eq!(found.access_key_id(), "AKIADEV");
        assert_eq!(found.secret_access_key().expose_secret(), "dev-secret");
        assert_eq!(
            found.session_token().map(|t| t.expose_secret()),
            Some("dev-token")
        );
        assert_eq!(
            region(&env, None).expect("valid").as_deref(),
            Some("us-east-2")
        );
    }

    #[test]
    fn keys_in_the_config_file_count_too() {
        let setup = setup(
            "",
            "[profile cfg]\naws_access_key_id = AKIACFG\naws_secret_access_key = cfg\n",
        );
        let found = keys(credentials(&env(&setup, &[]), Some("cfg")).expect("valid"));
        assert_eq!(found.access_key_id(), "AKIACFG");
    }

    #[test]
    fn web_identity_profile() {
        let setup = setup(CREDENTIALS, CONFIG);
        let env = env(&setup, &[("AWS_ENDPOINT_URL_STS", "http://127.0.0.1:1")]);
        match credentials(&env, Some("web")).expect("valid") {
            Found::WebIdentity(config) => {
                assert_eq!(config.role_arn(), "arn:aws:iam::123456789012:role/app");
                assert!(config.token_file().ends_with("token"));
                assert!(!config.token_file().starts_with("~"));
            }
            _ => panic!("expected web identity"),
        }
    }

    #[test]
    fn named_profile_must_exist() {
        let setup = setup(CREDENTIALS, CONFIG);
        let env = env(&setup, &[("AWS_PROFILE", "missing")]);
        let error = credentials(&env, None)
            .err()
            .expect("not found")
            .to_string();
        assert!(error.contains("profile \"missing\" not found"), "{error}");
        assert!(error.contains("AWS_PROFILE"), "{error}");
    }

    #[test]
    fn unsupported_kinds_are_named() {
        let setup = setup(CREDENTIALS, CONFIG);
        let error = credentials(&env(&setup, &[]), Some("chained"))
            .err()
            .expect("unsupported")
            .to_string();
        assert!(error.contains("source_profile"), "{error}");
    }

    #[test]
    fn missing_files_mean_nothing_found() {
        let dir = tempfile::tempdir().expect("temp dir");
        let env = Env::from_pairs([("HOME", dir.path().to_str().expect("utf-8 path"))]);
        match credentials(&env, None).expect("valid") {
            Found::Nothing(searched) => assert!(searched.contains("\"default\""), "{searched}"),
            _ => panic!("expected nothing"),
        }
    }

    #[test]
    fn file_variables_override_the_defaults() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("creds.ini");
        std::fs::write(
            &file,
            "[default]\naws_access_key_id=A\naws_secret_access_key=B\n",
        )
        .expect("write");
        let env = Env::from_pairs([
            ("HOME", "/nonexistent"),
            (
                "AWS_SHARED_CREDENTIALS_FILE",
                file.to_str().expect("utf-8 path"),
            ),
        ]);
        assert_eq!(
            keys(credentials(&env, None).expect("valid")).access_key_id(),
            "A"
        );
    }
}
