//! What each connection's administrator lacks, at start-up (logged) and in `pgwarden check`.

use crate::catalog::{Catalog, connection_target};
use crate::config::{Config, ConfigError};
use pgwarden_core::{RoleDef, RoleKind};
use pgwarden_engine::{EngineError, Target, check_administrator};
pub use pgwarden_engine::{Finding, Severity};

/// The outcome for one connection.
pub struct Report {
    /// `mount/connection`.
    pub connection: String,
    /// What its administrator lacks, or why it could not be checked.
    pub outcome: Result<Vec<Finding>, EngineError>,
}

/// What the preset roles among `roles` need through `connection`: the schemas they cover and
/// the existing group roles they adopt, each sorted and once.
fn preset_needs<'a>(
    roles: impl Iterator<Item = &'a RoleDef>,
    connection: &str,
) -> (Vec<String>, Vec<String>) {
    let (mut schemas, mut adopted) = (Vec::new(), Vec::new());
    for role in roles.filter(|role| role.db_name == connection) {
        if let RoleKind::Preset {
            schemas: covered,
            group_role,
            adopt_group_role,
            ..
        } = &role.kind
        {
            schemas.extend(covered.iter().cloned());
            if *adopt_group_role {
                adopted.push(group_role.clone());
            }
        }
    }
    for list in [&mut schemas, &mut adopted] {
        list.sort();
        list.dedup();
    }
    (schemas, adopted)
}

async fn report<'a>(
    connection: String,
    target: &Target,
    roles: impl Iterator<Item = &'a RoleDef>,
    name: &str,
) -> Report {
    let (schemas, adopted) = preset_needs(roles, name);
    Report {
        outcome: check_administrator(target, &schemas, &adopted).await,
        connection,
    }
}

/// Checks every connection of the catalog that asks to be verified.
pub async fn check_catalog(catalog: &Catalog) -> Vec<Report> {
    let mut reports = Vec::new();
    for (mount, name, target) in catalog.targets_to_verify() {
        let roles = catalog.roles(&mount).unwrap_or_default();
        reports.push(report(format!("{mount}/{name}"), &target, roles.iter(), &name).await);
    }
    reports
}

/// Checks every connection of the configuration file (without opening the state store).
pub async fn check_config(config: &Config) -> Result<Vec<Report>, ConfigError> {
    let mut reports = Vec::new();
    for (mount, mount_config) in &config.mounts {
        let roles = mount_config
            .roles
            .iter()
            .map(|(name, spec)| {
                spec.clone()
                    .into_def(name)
                    .map_err(|source| ConfigError::Definition {
                        mount: mount.clone(),
                        source,
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        for (name, connection) in &mount_config.connections {
            let target = connection_target(mount, &connection.to_def(mount, name)?)?;
            reports.push(report(format!("{mount}/{name}"), &target, roles.iter(), name).await);
        }
    }
    Ok(reports)
}

/// One line per role of the configuration file that names a connection whose `allowed_roles`
/// do not take it: such a role can never be issued.
pub fn unallowed_roles(config: &Config) -> Vec<String> {
    let mut lines = Vec::new();
    for (mount, mount_config) in &config.mounts {
        for (name, spec) in &mount_config.roles {
            let Some(connection) = spec.db_name.as_deref() else {
                continue;
            };
            let Some(allowed) = mount_config
                .connections
                .get(connection)
                .map(|c| &c.allowed_roles)
            else {
                continue;
            };
            if !pgwarden_core::glob::any_match(allowed, name) {
                lines.push(format!(
                    "{mount}/{name}: role not in the allowed_roles of connection \
                     {connection:?} ({allowed:?}): it can never be issued; fix: add it to \
                     allowed_roles"
                ));
            }
        }
    }
    lines
}

/// Logs each report: a warning per finding, an error when a connection cannot be checked.
pub fn log(reports: &[Report]) {
    for report in reports {
        match &report.outcome {
            Ok(findings) => {
                for finding in findings {
                    tracing::warn!(connection = %report.connection, %finding, "administrator check");
                }
            }
            Err(error) => {
                tracing::warn!(connection = %report.connection, %error, "connection check failed; credentials from it will fail until it is reachable");
            }
        }
    }
}
