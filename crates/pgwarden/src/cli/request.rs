//! `pgwarden request …`: access requests — ask for a role that needs approval, decide on
//! others' requests, and fetch the credential once approved.

use crate::cli::creds::{self, Delivery};
use crate::cli::output::{self, Format};
use crate::cli::settings::ClientArgs;
use clap::{Args, Subcommand};
use pgwarden_core::wire::{RequestCreate, RequestList, RequestView};
use pgwarden_core::{Decision, RequestState, Ttl};

/// `pgwarden request` flags and subcommand.
#[derive(Args, Debug)]
pub struct RequestArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: RequestCommand,
    /// Where pgwarden is and which token to use.
    #[command(flatten)]
    pub client: ClientArgs,
}

/// The request subcommands.
#[derive(Subcommand, Debug)]
pub enum RequestCommand {
    /// Ask for a credential of a role the policy grants only with approval; prints the new
    /// request, pending until enough approvers approve.
    Create {
        /// The role as `<mount>/<role>`, e.g. `database/appdb-admin`.
        #[arg(value_name = "MOUNT/ROLE", value_parser = creds::mount_role)]
        role: String,
        /// Why you need it; approvers see this and it is kept in the audit log.
        #[arg(long)]
        reason: String,
        /// How long the credential should live once approved, e.g. `1h`; the role's default
        /// TTL when absent.
        #[arg(long, value_name = "TTL")]
        ttl: Option<Ttl>,
        /// Who may fetch the credential once approved (repeat for several, e.g.
        /// `--subject user:kari`); you when absent.
        #[arg(long = "subject", value_name = "SUBJECT")]
        subjects: Vec<String>,
    },
    /// List the requests you made, may decide, or may fetch, newest first (root: all).
    List {
        /// Only requests in this state: pending, approved, denied, withdrawn or expired.
        #[arg(long, value_parser = state)]
        state: Option<RequestState>,
    },
    /// Show one request with its decisions.
    Show {
        /// The request id (`req-…`).
        #[arg(value_name = "ID")]
        id: String,
    },
    /// Approve someone else's request; the credential is issued once enough approvers did.
    Approve {
        /// The request id.
        #[arg(value_name = "ID")]
        id: String,
        /// Why you approve; kept on the request and in the audit log.
        #[arg(long)]
        reason: String,
    },
    /// Deny someone else's request.
    Deny {
        /// The request id.
        #[arg(value_name = "ID")]
        id: String,
        /// Why you deny; kept on the request and in the audit log.
        #[arg(long)]
        reason: String,
    },
    /// Withdraw your request; a credential already issued for it is revoked at once.
    Withdraw {
        /// The request id.
        #[arg(value_name = "ID")]
        id: String,
    },
    /// Fetch the credential of an approved request (for its subjects) and print it, print it
    /// as shell variables, or open psql with it.
    Creds {
        /// The request id.
        #[arg(value_name = "ID")]
        id: String,
        /// How to hand the credential over.
        #[command(flatten)]
        delivery: Delivery,
    },
}

/// Parses a request state (a usage error otherwise).
fn state(text: &str) -> Result<RequestState, String> {
    RequestState::parse(text).ok_or_else(|| {
        format!(
            "unknown state \"{text}\"; expected pending, approved, denied, withdrawn or expired"
        )
    })
}

/// One decision as `who at when: why`.
fn decision(d: &Decision) -> String {
    format!("{} at {}: {}", d.approver, output::instant(d.at), d.reason)
}

/// A request as aligned key–value lines.
fn show(view: &RequestView) -> String {
    let mut rows = vec![
        ("id", view.id.clone()),
        ("state", view.state.as_str().to_string()),
        ("role", view.role.clone()),
        ("requester", view.requester.clone()),
        ("reason", view.reason.clone()),
        ("ttl", output::duration(view.ttl.as_secs())),
        ("subjects", view.subjects.join(", ")),
        ("created", output::instant(view.created)),
        ("expires", output::instant(view.expires)),
        (
            "approvals",
            format!("{} of {}", view.approvals.len(), view.approvals_required),
        ),
    ];
    for approval in &view.approvals {
        rows.push(("approved by", decision(approval)));
    }
    if let Some(denial) = &view.denial {
        rows.push(("denied by", decision(denial)));
    }
    if let Some(withdrawal) = &view.withdrawal {
        rows.push(("withdrawn by", decision(withdrawal)));
    }
    if let Some(lease) = &view.lease_id {
        rows.push(("lease_id", lease.clone()));
    }
    output::pairs(&rows)
}

/// Prints one request as `format` says.
fn print_view(view: &RequestView, format: Format) -> Result<(), String> {
    match format {
        Format::Json => println!("{}", output::json(view)?),
        Format::Table => print!("{}", show(view)),
    }
    Ok(())
}

/// Runs a request subcommand.
pub async fn run(args: RequestArgs) -> Result<(), String> {
    let client = args.client.client()?;
    let format = args.client.format;
    let fail = crate::cli::message;
    match args.command {
        RequestCommand::Create {
            role,
            reason,
            ttl,
            subjects,
        } => {
            let body = RequestCreate {
                role,
                reason,
                ttl,
                subjects,
            };
            let view = client.create_request(&body).await.map_err(fail)?;
            print_view(&view, format)?;
        }
        RequestCommand::List { state } => {
            let requests = client.list_requests(state).await.map_err(fail)?;
            match format {
                Format::Json => println!("{}", output::json(&RequestList { requests })?),
                Format::Table if requests.is_empty() => eprintln!("no requests"),
                Format::Table => {
                    let rows: Vec<Vec<String>> = requests
                        .iter()
                        .map(|r| {
                            vec![
                                r.id.clone(),
                                r.state.as_str().to_string(),
                                r.role.clone(),
                                r.requester.clone(),
                                output::duration(r.ttl.as_secs()),
                                output::instant(r.created),
                                r.reason.clone(),
                            ]
                        })
                        .collect();
                    print!(
                        "{}",
                        output::table(
                            &[
                                "ID",
                                "STATE",
                                "ROLE",
                                "REQUESTER",
                                "TTL",
                                "CREATED",
                                "REASON"
                            ],
                            &rows
                        )
                    );
                }
            }
        }
        RequestCommand::Show { id } => {
            print_view(&client.get_request(&id).await.map_err(fail)?, format)?;
        }
        RequestCommand::Approve { id, reason } => {
            print_view(
                &client.approve_request(&id, &reason).await.map_err(fail)?,
                format,
            )?;
        }
        RequestCommand::Deny { id, reason } => {
            print_view(
                &client.deny_request(&id, &reason).await.map_err(fail)?,
                format,
            )?;
        }
        RequestCommand::Withdraw { id } => {
            print_view(&client.withdraw_request(&id).await.map_err(fail)?, format)?;
        }
        RequestCommand::Creds { id, delivery } => {
            let answer = client.request_credential(&id).await.map_err(fail)?;
            creds::deliver(&answer, &delivery, format)?;
        }
    }
    Ok(())
}
