//! Development credentials. When the services are given no way to check
//! tokens, `sagactl up` signs them with a secret of its own, kept under
//! `SAGA_HOME` (default `~/.saga`), and writes an admin's and the demo
//! customer's tokens beside it; the CLI sends the admin's when it is given
//! no `--token`, `sagactl demo` places its order as the demo customer, and
//! `sagactl token` mints others with the same secret. Where the services
//! share a secret given to them (compose.yaml), `SAGA_AUTH_SECRET` hands it
//! to the CLI, which then mints what it sends.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use saga_shared::auth::{AuthConfig, Minter, Role};

/// The customer `sagactl demo` orders as.
pub const DEMO_CUSTOMER: &str = "demo-customer";
/// How long the tokens `sagactl up` writes are valid.
pub const TOKEN_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// Where the development secret and tokens live.
pub fn home() -> PathBuf {
    if let Some(dir) = std::env::var_os("SAGA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    match std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        Some(home) => PathBuf::from(home).join(".saga"),
        None => PathBuf::from(".saga"),
    }
}

fn secret_path() -> PathBuf {
    home().join("dev-secret")
}

/// Where the token of `who` (`admin`, the demo customer) is written.
pub fn token_path(who: &str) -> PathBuf {
    home().join(format!("{who}.token"))
}

/// Writes `text` to a file only its owner can read, whatever mode a file
/// already there had, and at once: it is written beside, then renamed over
/// (so a reader sees the old text or the new, never an empty file).
fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let name = path
        .file_name()
        .with_context(|| format!("{} names no file", path.display()))?;
    let temporary = dir.join(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let written = options
        .open(&temporary)
        .and_then(|mut file| {
            // The mode given at creation does not apply to a file left
            // over from an earlier run: set it.
            #[cfg(unix)]
            file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
            file.write_all(text.as_bytes())?;
            file.sync_all()
        })
        .and_then(|()| std::fs::rename(&temporary, path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&temporary);
        return Err(e).with_context(|| format!("writing {}", path.display()));
    }
    Ok(())
}

/// The development secret, created on first use.
///
/// # Errors
/// `SAGA_HOME` cannot be read or written.
pub fn secret_or_create() -> anyhow::Result<String> {
    if let Some(secret) = secret()? {
        return Ok(secret);
    }
    let secret = saga_shared::auth::random_secret();
    write_private(&secret_path(), &secret)?;
    Ok(secret)
}

/// The secret tokens are minted with: `SAGA_AUTH_SECRET` if set (the
/// services' `auth.hs256_secret`, as compose.yaml passes it), else the
/// development secret if one was made.
///
/// # Errors
/// The file exists but cannot be read.
pub fn secret() -> anyhow::Result<Option<String>> {
    if let Some(secret) = std::env::var("SAGA_AUTH_SECRET")
        .ok()
        .filter(|s| !s.is_empty())
    {
        return Ok(Some(secret));
    }
    read_trimmed(&secret_path())
}

fn read_trimmed(path: &Path) -> anyhow::Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text.trim().to_owned())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Mints a token with `secret` and the default issuer and audience.
///
/// # Errors
/// A short secret or an unusable subject.
pub fn mint(secret: &str, subject: &str, role: Role, ttl: Duration) -> anyhow::Result<String> {
    Ok(Minter::from_config(&AuthConfig::with_secret(secret))?.mint(subject, role, ttl)?)
}

/// Writes the admin's and the demo customer's tokens; returns their paths.
///
/// # Errors
/// `SAGA_HOME` cannot be written.
pub fn write_tokens(secret: &str) -> anyhow::Result<[PathBuf; 2]> {
    let admin = token_path("admin");
    write_private(&admin, &mint(secret, "admin", Role::Admin, TOKEN_TTL)?)?;
    let customer = token_path(DEMO_CUSTOMER);
    write_private(
        &customer,
        &mint(secret, DEMO_CUSTOMER, Role::Customer, TOKEN_TTL)?,
    )?;
    Ok([admin, customer])
}

/// The token the CLI sends: the one it was given, else one minted for an
/// admin with `SAGA_AUTH_SECRET`, else the admin token `sagactl up` wrote,
/// else none.
///
/// # Errors
/// A file exists but cannot be read, or the secret is too short.
pub fn cli_token(given: Option<String>) -> anyhow::Result<Option<String>> {
    if let Some(token) = given.filter(|t| !t.is_empty()) {
        return Ok(Some(token));
    }
    token_of("admin", Role::Admin)
}

/// The demo customer's token, found like the CLI's ([`cli_token`]).
///
/// # Errors
/// A file exists but cannot be read, or the secret is too short.
pub fn demo_customer_token() -> anyhow::Result<Option<String>> {
    token_of(DEMO_CUSTOMER, Role::Customer)
}

/// A token for `who`: minted with `SAGA_AUTH_SECRET`, else the one `sagactl
/// up` wrote.
fn token_of(who: &str, role: Role) -> anyhow::Result<Option<String>> {
    match std::env::var("SAGA_AUTH_SECRET") {
        Ok(secret) if !secret.is_empty() => {
            Ok(Some(mint(&secret, who, role, Duration::from_secs(3600))?))
        }
        _ => read_trimmed(&token_path(who)),
    }
}

#[cfg(all(test, unix))]
mod private_file_tests {
    use std::os::unix::fs::PermissionsExt;

    /// A token or secret file written over one that others could read ends
    /// up readable by its owner only, and a reader never sees it half
    /// written. The mode used to be set only when the file was created.
    #[test]
    fn a_private_file_written_over_a_readable_one_is_private() {
        let dir = std::env::temp_dir().join(format!("saga-dev-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("admin.token");
        std::fs::write(&path, "old").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        super::write_private(&path, "new").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{mode:o}");
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["admin.token"], "no temporary file left");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
