//! AWS credentials and region, found the way the AWS SDKs and CLI find
//! them, limited to static keys (no role assumption, SSO, process or
//! instance metadata).
//!
//! The chain: the environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
//! `AWS_SESSION_TOKEN`), then the profile in the shared credentials file
//! (`AWS_SHARED_CREDENTIALS_FILE`, else `~/.aws/credentials`) and config
//! file (`AWS_CONFIG_FILE`, else `~/.aws/config`), a property in the
//! credentials file overriding the same one in the config file. The profile
//! is the one asked for, else `AWS_PROFILE`, else `default`. A profile asked
//! for by name skips the environment's keys, as in botocore and the AWS CLI
//! (`--profile`): a deployment configured for one account must not quietly
//! run as whatever keys the gateway's environment holds.
//!
//! The environment is passed in as a function so that tests never touch the
//! process's own. Files are read with blocking IO: this runs when the
//! configuration loads, never on the request path.

use std::path::{Path, PathBuf};

use super::profile::{self, FileKind, ProfileSet, Properties};

/// An AWS access key pair, with a session token when it is temporary.
/// `Debug` shows the key id only.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub access_key_id: String,
    secret_access_key: String,
    pub session_token: Option<String>,
}

impl Credentials {
    pub fn new(
        access_key_id: impl Into<String>,
        secret_access_key: impl Into<String>,
        session_token: Option<String>,
    ) -> Credentials {
        Credentials {
            access_key_id: access_key_id.into(),
            secret_access_key: secret_access_key.into(),
            session_token,
        }
    }

    /// The secret, for the signer only; never log or print it.
    pub(crate) fn secret_access_key(&self) -> &str {
        &self.secret_access_key
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const REDACTED: &str = "** redacted **";
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &REDACTED)
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| REDACTED),
            )
            .finish()
    }
}

/// Why no credentials could be loaded. Messages name the variables, files
/// and profiles involved, never a secret's value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialsError {
    /// Nothing in the chain held keys; `searched` says what each place held.
    #[error(
        "no AWS credentials found for profile `{profile}`; looked in: {}",
        searched.join("; ")
    )]
    NotFound {
        profile: String,
        searched: Vec<String>,
    },
    /// A profile holds one half of a key pair.
    #[error("AWS profile `{profile}` sets {present} but not {missing} (in {files})")]
    Incomplete {
        profile: String,
        present: &'static str,
        missing: &'static str,
        files: String,
    },
    /// A profile gets its credentials in a way this loader does not support.
    #[error(
        "AWS profile `{profile}` gets its credentials through `{setting}` (in {files}), which Switchboard does not support; give the profile aws_access_key_id and aws_secret_access_key, or set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
    )]
    Unsupported {
        profile: String,
        setting: &'static str,
        files: String,
    },
    #[error("could not read the AWS {what} {}: {reason}", path.display())]
    Unreadable {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("the AWS {what} {} is malformed on line {line}: {message}", path.display())]
    Malformed {
        what: &'static str,
        path: PathBuf,
        line: usize,
        message: &'static str,
    },
}

const ACCESS_KEY_ID: &str = "aws_access_key_id";
const SECRET_ACCESS_KEY: &str = "aws_secret_access_key";
const SESSION_TOKEN: &str = "aws_session_token";

/// Settings that make the AWS SDKs assume a role instead of using the
/// profile's own keys: when present, the keys are not the identity the
/// operator meant.
const ROLE_SETTINGS: &[&str] = &["role_arn"];

/// Other ways of getting credentials, used only when the profile has no
/// static keys.
const OTHER_SOURCES: &[&str] = &[
    "credential_process",
    "sso_session",
    "sso_start_url",
    "web_identity_token_file",
    "credential_source",
];

/// Loads credentials through the standard chain (see the module comment).
pub fn load_credentials(
    env: &dyn Fn(&str) -> Option<String>,
    profile: Option<&str>,
) -> Result<Credentials, CredentialsError> {
    let env = |name: &str| env(name).filter(|value| !value.trim().is_empty());
    let explicit_profile = profile.map(str::trim).filter(|name| !name.is_empty());
    let mut searched = Vec::new();

    match explicit_profile {
        Some(name) => searched.push(format!(
            "environment variables (skipped: profile `{name}` was named explicitly)"
        )),
        None => {
            let access_key_id = env("AWS_ACCESS_KEY_ID");
            let secret_access_key = env("AWS_SECRET_ACCESS_KEY");
            match (access_key_id, secret_access_key) {
                (Some(access_key_id), Some(secret_access_key)) => {
                    return Ok(Credentials::new(
                        access_key_id.trim(),
                        secret_access_key.trim(),
                        env("AWS_SESSION_TOKEN").map(|token| token.trim().to_owned()),
                    ));
                }
                (Some(_), None) => searched.push(
                    "environment variables (AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not)"
                        .to_owned(),
                ),
                (None, Some(_)) => searched.push(
                    "environment variables (AWS_SECRET_ACCESS_KEY is set but AWS_ACCESS_KEY_ID is not)"
                        .to_owned(),
                ),
                (None, None) => searched.push(
                    "environment variables (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are not set)"
                        .to_owned(),
                ),
            }
        }
    }

    let profile_name = explicit_profile
        .map(str::to_owned)
        .or_else(|| env("AWS_PROFILE").map(|name| name.trim().to_owned()))
        .unwrap_or_else(|| "default".to_owned());

    let credentials_file = ProfileFile::load(&env, FileKind::Credentials)?;
    let config_file = ProfileFile::load(&env, FileKind::Config)?;
    let in_credentials = credentials_file.profile(&profile_name);
    let in_config = config_file.profile(&profile_name);
    searched.push(credentials_file.describe(&profile_name));
    searched.push(config_file.describe(&profile_name));

    // The config file first, the credentials file over it, property by
    // property, as the AWS SDKs merge them.
    let mut merged = Properties::new();
    let mut files = Vec::new();
    for (file, properties) in [
        (&config_file, in_config),
        (&credentials_file, in_credentials),
    ] {
        if let Some(properties) = properties {
            merged.extend(
                properties
                    .iter()
                    .filter(|(_, value)| !value.is_empty())
                    .map(|(name, value)| (name.clone(), value.clone())),
            );
            files.push(file.label());
        }
    }
    if files.is_empty() {
        return Err(CredentialsError::NotFound {
            profile: profile_name,
            searched,
        });
    }
    let files = files.join(" and ");

    if let Some(setting) = ROLE_SETTINGS
        .iter()
        .find(|setting| merged.contains_key(**setting))
    {
        return Err(CredentialsError::Unsupported {
            profile: profile_name,
            setting,
            files,
        });
    }
    match (merged.get(ACCESS_KEY_ID), merged.get(SECRET_ACCESS_KEY)) {
        (Some(access_key_id), Some(secret_access_key)) => Ok(Credentials::new(
            access_key_id.as_str(),
            secret_access_key.as_str(),
            merged.get(SESSION_TOKEN).cloned(),
        )),
        (Some(_), None) => Err(CredentialsError::Incomplete {
            profile: profile_name,
            present: ACCESS_KEY_ID,
            missing: SECRET_ACCESS_KEY,
            files,
        }),
        (None, Some(_)) => Err(CredentialsError::Incomplete {
            profile: profile_name,
            present: SECRET_ACCESS_KEY,
            missing: ACCESS_KEY_ID,
            files,
        }),
        (None, None) => match OTHER_SOURCES
            .iter()
            .find(|setting| merged.contains_key(**setting))
        {
            Some(setting) => Err(CredentialsError::Unsupported {
                profile: profile_name,
                setting,
                files,
            }),
            None => {
                searched.push(format!(
                    "profile `{profile_name}` (in {files}) has no {ACCESS_KEY_ID}"
                ));
                Err(CredentialsError::NotFound {
                    profile: profile_name,
                    searched,
                })
            }
        },
    }
}

/// The region: `AWS_REGION`, `AWS_DEFAULT_REGION`, then `region` in the
/// profile (chosen as for credentials) of the config file. A config file
/// that cannot be read is logged and treated as holding no region.
pub fn load_region(env: &dyn Fn(&str) -> Option<String>, profile: Option<&str>) -> Option<String> {
    let env = |name: &str| {
        env(name)
            .map(|value| value.trim().to_owned())
            .filter(|value| !value.is_empty())
    };
    if let Some(region) = env("AWS_REGION").or_else(|| env("AWS_DEFAULT_REGION")) {
        return Some(region);
    }
    let profile_name = profile
        .map(str::trim)
        .filter(|name| !name.is_empty())
        .map(str::to_owned)
        .or_else(|| env("AWS_PROFILE"))
        .unwrap_or_else(|| "default".to_owned());
    match ProfileFile::load(&env, FileKind::Config) {
        Ok(config_file) => config_file
            .profile(&profile_name)
            .and_then(|properties| properties.get("region"))
            .filter(|region| !region.is_empty())
            .cloned(),
        Err(error) => {
            tracing::warn!(%error, "AWS region not read from the config file");
            None
        }
    }
}

/// One of the two profile files, as far as it could be found.
struct ProfileFile {
    kind: FileKind,
    /// `None` when no path could be worked out (no override, no home).
    path: Option<PathBuf>,
    /// `None` when the file does not exist.
    profiles: Option<ProfileSet>,
}

impl ProfileFile {
    /// Reads the file if it exists. A missing file is no error (most hosts
    /// have none); one that exists but cannot be read or parsed is.
    fn load(
        env: &dyn Fn(&str) -> Option<String>,
        kind: FileKind,
    ) -> Result<ProfileFile, CredentialsError> {
        let (variable, default) = match kind {
            FileKind::Credentials => ("AWS_SHARED_CREDENTIALS_FILE", ".aws/credentials"),
            FileKind::Config => ("AWS_CONFIG_FILE", ".aws/config"),
        };
        let home = home_directory(env);
        let path = match env(variable) {
            Some(path) => Some(expand_home(path.trim(), home.as_deref())),
            None => home.map(|home| home.join(default)),
        };
        let Some(path) = path else {
            return Ok(ProfileFile {
                kind,
                path: None,
                profiles: None,
            });
        };
        let what = what(kind);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Ok(ProfileFile {
                    kind,
                    path: Some(path),
                    profiles: None,
                });
            }
            Err(error) => {
                return Err(CredentialsError::Unreadable {
                    what,
                    path,
                    reason: error.to_string(),
                });
            }
        };
        let profiles = profile::parse(&String::from_utf8_lossy(&bytes), kind).map_err(|error| {
            CredentialsError::Malformed {
                what,
                path: path.clone(),
                line: error.line,
                message: error.message,
            }
        })?;
        Ok(ProfileFile {
            kind,
            path: Some(path),
            profiles: Some(profiles),
        })
    }

    fn profile(&self, name: &str) -> Option<&Properties> {
        self.profiles
            .as_ref()
            .and_then(|profiles| profiles.get(name))
    }

    /// `credentials file /home/a/.aws/credentials`, for messages.
    fn label(&self) -> String {
        match &self.path {
            Some(path) => format!("{} {}", what(self.kind), path.display()),
            None => what(self.kind).to_owned(),
        }
    }

    /// What this file held for `profile`, for the list of places searched.
    fn describe(&self, profile: &str) -> String {
        let section = match self.kind {
            FileKind::Config if profile != "default" => format!("[profile {profile}]"),
            _ => format!("[{profile}]"),
        };
        match (&self.path, &self.profiles) {
            (None, _) => format!(
                "{} (no path: {} and HOME are not set)",
                what(self.kind),
                match self.kind {
                    FileKind::Credentials => "AWS_SHARED_CREDENTIALS_FILE",
                    FileKind::Config => "AWS_CONFIG_FILE",
                }
            ),
            (Some(_), None) => format!("{} (not found)", self.label()),
            (Some(_), Some(profiles)) if profiles.get(profile).is_none() => {
                format!("{} (no {section} section)", self.label())
            }
            (Some(_), Some(_)) => format!("{} ({section})", self.label()),
        }
    }
}

fn what(kind: FileKind) -> &'static str {
    match kind {
        FileKind::Credentials => "credentials file",
        FileKind::Config => "config file",
    }
}

/// The user's home directory: `HOME`, else (on Windows) `USERPROFILE`, else
/// `HOMEDRIVE` and `HOMEPATH`.
fn home_directory(env: &dyn Fn(&str) -> Option<String>) -> Option<PathBuf> {
    let non_empty = |name: &str| env(name).filter(|value| !value.trim().is_empty());
    non_empty("HOME")
        .or_else(|| non_empty("USERPROFILE"))
        .or_else(|| {
            Some(format!(
                "{}{}",
                non_empty("HOMEDRIVE")?,
                non_empty("HOMEPATH")?
            ))
        })
        .map(PathBuf::from)
}

/// Expands a leading `~` (alone or before a separator) to the home
/// directory, as the AWS SDKs do for the file overrides.
fn expand_home(path: &str, home: Option<&Path>) -> PathBuf {
    let rest = if path == "~" {
        Some("")
    } else {
        path.strip_prefix("~/").or_else(|| path.strip_prefix("~\\"))
    };
    match (rest, home) {
        (Some(rest), Some(home)) => home.join(rest),
        _ => PathBuf::from(path),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// A directory of its own under the system's temporary directory,
    /// removed when dropped.
    struct TempHome {
        path: PathBuf,
    }

    impl TempHome {
        fn new() -> TempHome {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let path = std::env::temp_dir().join(format!(
                "switchboard-aws-credentials-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&path).unwrap();
            TempHome { path }
        }

        /// Writes `contents` at `relative` (creating folders) and returns
        /// the full path.
        fn write(&self, relative: &str, contents: &str) -> PathBuf {
            let path = self.path.join(relative);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, contents).unwrap();
            path
        }

        fn path_text(&self, relative: &str) -> String {
            self.path.join(relative).display().to_string()
        }
    }

    impl Drop for TempHome {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }

    /// An environment holding exactly `pairs`.
    fn environment(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
            .collect();
        move |name| map.get(name).cloned()
    }

    fn keys(credentials: &Credentials) -> (&str, &str, Option<&str>) {
        (
            credentials.access_key_id.as_str(),
            credentials.secret_access_key(),
            credentials.session_token.as_deref(),
        )
    }

    const CREDENTIALS_FILE: &str = "\
        [default]\n\
        aws_access_key_id = AKIDDEFAULT\n\
        aws_secret_access_key = secret-default\n\
        \n\
        # the account Bedrock runs in\n\
        [work]\n\
        aws_access_key_id=AKIDWORK\n\
        aws_secret_access_key=secret-work\n\
        aws_session_token=token-work\n";

    #[test]
    fn keys_in_the_environment_come_first() {
        let home = TempHome::new();
        home.write(".aws/credentials", CREDENTIALS_FILE);
        let home_text = home.path_text("");
        let env = environment(&[
            ("HOME", &home_text),
            ("AWS_PROFILE", "work"),
            ("AWS_ACCESS_KEY_ID", "AKIDENV"),
            ("AWS_SECRET_ACCESS_KEY", "secret-env"),
            ("AWS_SESSION_TOKEN", "token-env"),
        ]);
        let credentials = load_credentials(&env, None).unwrap();
        assert_eq!(
            keys(&credentials),
            ("AKIDENV", "secret-env", Some("token-env"))
        );

        // Without a token the keys are long-term ones; an empty variable is
        // an unset one.
        let env = environment(&[
            ("HOME", &home_text),
            ("AWS_ACCESS_KEY_ID", "AKIDENV"),
            ("AWS_SECRET_ACCESS_KEY", "secret-env"),
            ("AWS_SESSION_TOKEN", ""),
        ]);
        let credentials = load_credentials(&env, None).unwrap();
        assert_eq!(keys(&credentials), ("AKIDENV", "secret-env", None));
    }

    #[test]
    fn a_profile_named_explicitly_skips_the_environment() {
        let home = TempHome::new();
        home.write(".aws/credentials", CREDENTIALS_FILE);
        let home_text = home.path_text("");
        let env = environment(&[
            ("HOME", &home_text),
            ("AWS_ACCESS_KEY_ID", "AKIDENV"),
            ("AWS_SECRET_ACCESS_KEY", "secret-env"),
        ]);
        let credentials = load_credentials(&env, Some("work")).unwrap();
        assert_eq!(
            keys(&credentials),
            ("AKIDWORK", "secret-work", Some("token-work"))
        );
    }

    #[test]
    fn the_credentials_file_holds_one_profile_per_section() {
        let home = TempHome::new();
        let file = home.write("elsewhere/creds", CREDENTIALS_FILE);
        let file_text = file.display().to_string();
        let env = environment(&[("AWS_SHARED_CREDENTIALS_FILE", &file_text)]);
        let default = load_credentials(&env, None).unwrap();
        assert_eq!(keys(&default), ("AKIDDEFAULT", "secret-default", None));
        let work = load_credentials(&env, Some("work")).unwrap();
        assert_eq!(keys(&work), ("AKIDWORK", "secret-work", Some("token-work")));

        let env = environment(&[
            ("AWS_SHARED_CREDENTIALS_FILE", &file_text),
            ("AWS_PROFILE", "work"),
        ]);
        let from_variable = load_credentials(&env, None).unwrap();
        assert_eq!(keys(&from_variable), keys(&work));

        // `~/` in an override is the home directory.
        let home_text = home.path_text("");
        let env = environment(&[
            ("HOME", &home_text),
            ("AWS_SHARED_CREDENTIALS_FILE", "~/elsewhere/creds"),
        ]);
        let expanded = load_credentials(&env, None).unwrap();
        assert_eq!(keys(&expanded), keys(&default));
    }

    #[test]
    fn the_config_file_names_profiles_with_a_prefix() {
        let home = TempHome::new();
        home.write(
            ".aws/config",
            "[default]\n\
             region = us-west-2\n\
             aws_access_key_id = AKIDCONFIGDEFAULT\n\
             aws_secret_access_key = secret-config-default\n\
             [profile bedrock]\n\
             AWS_ACCESS_KEY_ID = AKIDBEDROCK\n\
             Aws_Secret_Access_Key = secret-bedrock ; a comment\n\
             [stray]\n\
             aws_access_key_id = AKIDSTRAY\n\
             aws_secret_access_key = secret-stray\n",
        );
        let home_text = home.path_text("");
        let env = environment(&[("HOME", &home_text)]);
        let bedrock = load_credentials(&env, Some("bedrock")).unwrap();
        assert_eq!(keys(&bedrock), ("AKIDBEDROCK", "secret-bedrock", None));
        let default = load_credentials(&env, None).unwrap();
        assert_eq!(
            keys(&default),
            ("AKIDCONFIGDEFAULT", "secret-config-default", None)
        );
        // In the config file a bare `[stray]` is not a profile.
        let error = load_credentials(&env, Some("stray")).unwrap_err();
        assert!(
            matches!(error, CredentialsError::NotFound { .. }),
            "{error:?}"
        );
        assert!(!error.to_string().contains("secret-stray"));
    }

    #[test]
    fn the_credentials_file_overrides_the_config_file_property_by_property() {
        let home = TempHome::new();
        home.write(
            ".aws/config",
            "[profile p]\naws_access_key_id = AKIDCONFIG\naws_secret_access_key = secret-config\n",
        );
        home.write(
            ".aws/credentials",
            "[p]\naws_secret_access_key = secret-credentials\n",
        );
        let home_text = home.path_text("");
        let env = environment(&[("HOME", &home_text)]);
        let credentials = load_credentials(&env, Some("p")).unwrap();
        assert_eq!(
            keys(&credentials),
            ("AKIDCONFIG", "secret-credentials", None)
        );
    }

    #[test]
    fn finding_nothing_says_where_it_looked() {
        let home = TempHome::new();
        let home_text = home.path_text("");
        let env = environment(&[("HOME", &home_text)]);
        let error = load_credentials(&env, None).unwrap_err();
        let CredentialsError::NotFound { profile, searched } = &error else {
            panic!("{error:?}");
        };
        assert_eq!(profile, "default");
        assert_eq!(searched.len(), 3, "{searched:?}");
        let message = error.to_string();
        for expected in [
            "profile `default`",
            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are not set",
            &format!(
                "credentials file {} (not found)",
                home.path_text(".aws/credentials")
            ),
            &format!("config file {} (not found)", home.path_text(".aws/config")),
        ] {
            assert!(
                message.contains(expected),
                "{expected:?} missing from {message}"
            );
        }

        // Files that exist but lack the profile, half a key pair in the
        // environment, and no home at all are each reported as such.
        home.write(".aws/credentials", CREDENTIALS_FILE);
        home.write(".aws/config", "[profile other]\nregion = eu-west-1\n");
        let env = environment(&[
            ("HOME", &home_text),
            ("AWS_PROFILE", "missing"),
            ("AWS_ACCESS_KEY_ID", "AKIDENV"),
        ]);
        let message = load_credentials(&env, None).unwrap_err().to_string();
        for expected in [
            "profile `missing`",
            "AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not",
            "(no [missing] section)",
            "(no [profile missing] section)",
        ] {
            assert!(
                message.contains(expected),
                "{expected:?} missing from {message}"
            );
        }
        assert!(!message.contains("secret-"), "{message}");

        let message = load_credentials(&environment(&[]), None)
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("AWS_SHARED_CREDENTIALS_FILE and HOME are not set"),
            "{message}"
        );
        assert!(
            message.contains("AWS_CONFIG_FILE and HOME are not set"),
            "{message}"
        );
    }

    #[test]
    fn profiles_that_cannot_be_used_are_explained() {
        let home = TempHome::new();
        home.write(
            ".aws/credentials",
            "[half]\naws_access_key_id = AKIDHALF\n\
             [other-half]\naws_secret_access_key = secret-other-half\n\
             [empty]\nregion = us-east-1\n",
        );
        home.write(
            ".aws/config",
            "[profile role]\nrole_arn = arn:aws:iam::123456789012:role/x\nsource_profile = half\n\
             aws_access_key_id = AKIDROLE\naws_secret_access_key = secret-role\n\
             [profile sso]\nsso_session = corp\n",
        );
        let home_text = home.path_text("");
        let env = environment(&[("HOME", &home_text)]);
        let credentials_path = home.path_text(".aws/credentials");
        let config_path = home.path_text(".aws/config");

        let error = load_credentials(&env, Some("half")).unwrap_err();
        assert_eq!(
            error,
            CredentialsError::Incomplete {
                profile: "half".to_owned(),
                present: "aws_access_key_id",
                missing: "aws_secret_access_key",
                files: format!("credentials file {credentials_path}"),
            }
        );
        let error = load_credentials(&env, Some("other-half")).unwrap_err();
        assert!(
            matches!(
                error,
                CredentialsError::Incomplete {
                    present: "aws_secret_access_key",
                    ..
                }
            ),
            "{error:?}"
        );
        assert!(!error.to_string().contains("secret-other-half"));

        // A role to assume is not the profile's own keys.
        let error = load_credentials(&env, Some("role")).unwrap_err();
        assert_eq!(
            error,
            CredentialsError::Unsupported {
                profile: "role".to_owned(),
                setting: "role_arn",
                files: format!("config file {config_path}"),
            }
        );
        assert!(!error.to_string().contains("secret-role"));
        let error = load_credentials(&env, Some("sso")).unwrap_err();
        assert!(
            matches!(
                error,
                CredentialsError::Unsupported {
                    setting: "sso_session",
                    ..
                }
            ),
            "{error:?}"
        );

        let error = load_credentials(&env, Some("empty")).unwrap_err();
        assert!(
            error.to_string().contains(&format!(
                "profile `empty` (in credentials file {credentials_path}) has no aws_access_key_id"
            )),
            "{error}"
        );
    }

    #[test]
    fn files_that_cannot_be_read_are_errors_naming_the_file() {
        let home = TempHome::new();
        let malformed = home.write(
            "bad-credentials",
            "[default]\naws_access_key_id = AKIDBAD\nsecret-in-a-broken-line\n",
        );
        let malformed_text = malformed.display().to_string();
        let env = environment(&[("AWS_SHARED_CREDENTIALS_FILE", &malformed_text)]);
        let error = load_credentials(&env, None).unwrap_err();
        assert!(
            matches!(&error, CredentialsError::Malformed { line: 3, path, .. } if *path == malformed),
            "{error:?}"
        );
        let message = error.to_string();
        assert!(message.contains(&malformed_text), "{message}");
        assert!(!message.contains("secret-in-a-broken-line"), "{message}");

        // A directory where the file should be.
        let directory = home.path_text("");
        let env = environment(&[("AWS_CONFIG_FILE", &directory)]);
        let error = load_credentials(&env, None).unwrap_err();
        assert!(
            matches!(
                &error,
                CredentialsError::Unreadable {
                    what: "config file",
                    ..
                }
            ),
            "{error:?}"
        );
        assert!(error.to_string().contains(&directory), "{error}");
    }

    #[test]
    fn debug_shows_the_key_id_only() {
        let credentials = Credentials::new(
            "AKIDEXAMPLE",
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            Some("token-value".to_owned()),
        );
        let printed = format!("{credentials:?} {credentials:#?}");
        assert!(printed.contains("AKIDEXAMPLE"), "{printed}");
        assert!(!printed.contains("wJalrXUtnFEMI"), "{printed}");
        assert!(!printed.contains("token-value"), "{printed}");
        assert!(printed.contains("redacted"), "{printed}");
        let without_token = Credentials::new("AKIDEXAMPLE", "secret", None);
        assert!(format!("{without_token:?}").contains("session_token: None"));
    }

    #[test]
    fn the_region_comes_from_the_environment_then_the_config_file() {
        let home = TempHome::new();
        home.write(
            ".aws/config",
            "[default]\nregion = eu-west-1\n[profile bedrock]\nregion = us-west-2\n",
        );
        home.write(".aws/credentials", "[other]\nregion = ap-south-1\n");
        let home_text = home.path_text("");
        let with = |pairs: &[(&str, &str)]| {
            let mut all = vec![("HOME", home_text.as_str())];
            all.extend_from_slice(pairs);
            environment(&all)
        };

        let env = with(&[
            ("AWS_REGION", "us-east-1"),
            ("AWS_DEFAULT_REGION", "us-east-2"),
        ]);
        assert_eq!(
            load_region(&env, Some("bedrock")).as_deref(),
            Some("us-east-1")
        );
        let env = with(&[("AWS_DEFAULT_REGION", "us-east-2")]);
        assert_eq!(
            load_region(&env, Some("bedrock")).as_deref(),
            Some("us-east-2")
        );
        let env = with(&[("AWS_REGION", "")]);
        assert_eq!(load_region(&env, None).as_deref(), Some("eu-west-1"));
        assert_eq!(
            load_region(&env, Some("bedrock")).as_deref(),
            Some("us-west-2")
        );
        let env = with(&[("AWS_PROFILE", "bedrock")]);
        assert_eq!(load_region(&env, None).as_deref(), Some("us-west-2"));
        // Only the config file holds regions.
        assert_eq!(load_region(&env, Some("other")), None);
        assert_eq!(load_region(&environment(&[]), None), None);
    }
}
