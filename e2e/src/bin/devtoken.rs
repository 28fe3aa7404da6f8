//! Mints a development bearer token: `devtoken ROLE [SUB] [STORE,STORE…]`.
//!
//! Signs with `AUTH_JWT_SECRET` (or the development default), valid for 12 hours.

use shared::auth::{Role, mint_for};
use shared::config::{DEV_JWT_SECRET, env_or};
use std::io::Write;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let role = match args.next().as_deref() {
        Some("customer") => Role::Customer,
        Some("staff") => Role::Staff,
        Some("admin") => Role::Admin,
        Some("service") => Role::Service,
        _ => anyhow::bail!("usage: devtoken customer|staff|admin|service [SUB] [STORE,STORE…]"),
    };
    let sub = args
        .next()
        .unwrap_or_else(|| format!("dev-{role:?}").to_lowercase());
    let stores = args.next().unwrap_or_default();
    let stores: Vec<&str> = stores.split(',').filter(|s| !s.is_empty()).collect();
    let secret = env_or("AUTH_JWT_SECRET", DEV_JWT_SECRET);
    let token = mint_for(&secret, &sub, role, &stores, 12 * 3600)?;
    writeln!(std::io::stdout(), "{token}")?;
    Ok(())
}
