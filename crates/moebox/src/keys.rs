//! `moebox keys create|list|revoke --config FILE`: API keys in the ledger. `create` prints the
//! new key alone on stdout (the only time it exists in clear), so scripts can capture it.

use std::path::PathBuf;

use anyhow::Context;
use moebox_config::Config;
use moebox_ledger::{NewKey, Revocation, Scope, UnixSeconds};

#[derive(Debug, clap::Subcommand)]
pub enum KeysCommand {
    /// Create a key and print it (shown once; only its digest is stored).
    Create(CreateArgs),
    /// List keys (never their secrets).
    List {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// One JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key by id; it is refused from the next request on.
    Revoke {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        id: i64,
    },
}

#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// Who or what the key is for ("alice laptop", "ci").
    #[arg(long)]
    name: String,
    /// The team its usage is charged to.
    #[arg(long, default_value = moebox_ledger::DEFAULT_TEAM)]
    team: String,
    /// Admin scope: `/admin/` and `/metrics` as well as the API.
    #[arg(long)]
    admin: bool,
    /// Requests per minute (unlimited when left out).
    #[arg(long, value_name = "N")]
    rpm: Option<u32>,
    /// Tokens per minute (unlimited when left out).
    #[arg(long, value_name = "N")]
    tpm: Option<u32>,
    /// Tokens per calendar month (unlimited when left out).
    #[arg(long, value_name = "N")]
    monthly_tokens: Option<u64>,
}

pub fn run(command: KeysCommand) -> anyhow::Result<()> {
    match command {
        KeysCommand::Create(args) => create(args),
        KeysCommand::List { config, json } => list(&config, json),
        KeysCommand::Revoke { config, id } => revoke(&config, id),
    }
}

fn ledger(config: &std::path::Path) -> anyhow::Result<moebox_ledger::Ledger> {
    crate::serve::open_ledger(&Config::load(config)?)
}

fn create(args: CreateArgs) -> anyhow::Result<()> {
    let ledger = ledger(&args.config)?;
    let new = NewKey {
        name: args.name,
        team: args.team,
        scope: if args.admin {
            Scope::Admin
        } else {
            Scope::User
        },
        requests_per_minute: args.rpm,
        tokens_per_minute: args.tpm,
        monthly_token_budget: args.monthly_tokens,
    };
    let created = ledger
        .create_key(&new, UnixSeconds::now())
        .context("cannot create the key")?;
    let record = &created.record;
    eprintln!(
        "created key {} ({}, team {}, {} scope); it is shown once:",
        record.id,
        record.name,
        record.team,
        record.scope.as_str()
    );
    println!("{}", created.key.expose());
    Ok(())
}

fn list(config: &std::path::Path, json: bool) -> anyhow::Result<()> {
    let keys = ledger(config)?.list_keys().context("cannot list keys")?;
    if json {
        println!("{}", serde_json::to_string_pretty(&keys)?);
        return Ok(());
    }
    println!(
        "{:>4}  {:<20}  {:<12}  {:<5}  {:<14}  {:<20}  {:<20}  limits",
        "id", "name", "team", "scope", "key", "created", "revoked"
    );
    for key in keys {
        let mut limits = Vec::new();
        if let Some(rpm) = key.requests_per_minute {
            limits.push(format!("{rpm} rpm"));
        }
        if let Some(tpm) = key.tokens_per_minute {
            limits.push(format!("{tpm} tpm"));
        }
        if let Some(budget) = key.monthly_token_budget {
            limits.push(format!("{budget} tokens/month"));
        }
        println!(
            "{:>4}  {:<20}  {:<12}  {:<5}  {:<14}  {:<20}  {:<20}  {}",
            key.id,
            key.name,
            key.team,
            key.scope.as_str(),
            key.hint,
            key.created_at.to_rfc3339(),
            key.revoked_at
                .map(UnixSeconds::to_rfc3339)
                .unwrap_or_else(|| "-".into()),
            if limits.is_empty() {
                "-".to_owned()
            } else {
                limits.join(", ")
            }
        );
    }
    Ok(())
}

fn revoke(config: &std::path::Path, id: i64) -> anyhow::Result<()> {
    match ledger(config)?.revoke_key(id, UnixSeconds::now())? {
        Revocation::Revoked => eprintln!("key {id} revoked"),
        Revocation::AlreadyRevoked(at) => {
            eprintln!("key {id} was already revoked at {}", at.to_rfc3339());
        }
    }
    Ok(())
}
