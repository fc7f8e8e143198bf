//! `sagactl token`: mints a token with a shared secret.

use anyhow::{Context, bail};
use saga_shared::auth::{AuthConfig, Minter, Role};

use crate::cli::TokenArgs;

pub(super) fn run(args: &TokenArgs) -> anyhow::Result<()> {
    let secret = match &args.secret_file {
        Some(file) => std::fs::read_to_string(file)
            .with_context(|| format!("--secret-file {}", file.display()))?
            .trim()
            .to_owned(),
        None => match crate::dev::secret()? {
            Some(secret) => secret,
            None => bail!(
                "no secret: no SAGA_AUTH_SECRET and no development secret under {} \
                 (`sagactl up` makes one); pass --secret-file with the services' \
                 auth.hs256_secret",
                crate::dev::home().display()
            ),
        },
    };
    let (subject, role) = match (&args.customer, &args.admin, &args.service) {
        (Some(c), _, _) => (c, Role::Customer),
        (_, Some(a), _) => (a, Role::Admin),
        (_, _, Some(s)) => (s, Role::Service),
        _ => bail!("say whose token: --customer ID, --admin [NAME] or --service NAME"),
    };
    let cfg = AuthConfig {
        hs256_secret: secret,
        issuer: args.issuer.clone(),
        audience: args.audience.clone(),
        ..AuthConfig::default()
    };
    println!(
        "{}",
        Minter::from_config(&cfg)?.mint(subject, role, args.ttl)?
    );
    Ok(())
}
