//! The log on stderr. Every field's value is cleaned as the audit log's are: what looks like a
//! token or a JWT is redacted, and control characters are escaped, so no caller's input (a
//! login's role, a path) can put a secret in the log or forge a line of it.

use std::fmt;
use std::io::IsTerminal;
use tracing::field::{Field, Visit};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::{FormatFields, Writer};

/// Logs on stderr, filtered by PGWARDEN_LOG (else `default`); colours only on a terminal and
/// without NO_COLOR. Unless PGWARDEN_LOG names them, the database driver's debug lines (every
/// statement, password verifiers included) stay off, and so do the certificate verifier's
/// error lines (the error that fails the request says the same).
pub fn init(default: &str) {
    let wanted = std::env::var("PGWARDEN_LOG").unwrap_or_default();
    let mut filter = tracing_subscriber::EnvFilter::try_from_env("PGWARDEN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    for (target, quiet) in [
        ("tokio_postgres", "tokio_postgres=info"),
        ("rustls_platform_verifier", "rustls_platform_verifier=off"),
    ] {
        if !wanted.contains(target)
            && let Ok(quiet) = quiet.parse()
        {
            filter = filter.add_directive(quiet);
        }
    }
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .fmt_fields(CleanedFields)
        .with_writer(std::io::stderr)
        .init();
}

/// Fields as `name=value` (the message bare), each value cleaned; as the default format
/// does, a raw identifier's `r#` is dropped and the `log.*` fields that describe a `log` crate
/// record (a driver's notice) are left out.
struct CleanedFields;

impl<'writer> FormatFields<'writer> for CleanedFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'writer>, fields: R) -> fmt::Result {
        let mut visitor = CleanedVisitor {
            writer,
            wrote: false,
            result: Ok(()),
        };
        fields.record(&mut visitor);
        visitor.result
    }
}

/// Writes one event's or span's fields for [`CleanedFields`].
struct CleanedVisitor<'writer> {
    writer: Writer<'writer>,
    wrote: bool,
    result: fmt::Result,
}

impl Visit for CleanedVisitor<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let name = field.name();
        if self.result.is_err() || name.starts_with("log.") {
            return;
        }
        let value = pgwarden_core::audit::clean_for_log(&format!("{value:?}"));
        let space = if self.wrote { " " } else { "" };
        self.wrote = true;
        self.result = match name {
            "message" => write!(self.writer, "{space}{value}"),
            name => write!(
                self.writer,
                "{space}{}={value}",
                name.trim_start_matches("r#")
            ),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// What a subscriber with pgwarden's fields wrote while `log` ran.
    fn logged(log: impl FnOnce()) -> String {
        let out = Arc::new(Mutex::new(Vec::new()));
        let sink = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .without_time()
            .fmt_fields(CleanedFields)
            .with_writer(move || Sink(sink.clone()))
            .finish();
        tracing::subscriber::with_default(subscriber, log);
        String::from_utf8(out.lock().unwrap().clone()).unwrap()
    }

    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Sink {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_callers_input_cannot_forge_a_line_or_leak_a_token() {
        let token = format!("pgw_{}", "a".repeat(40));
        let jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln";
        let role = format!("x\n2026-12-07T15:40:00Z  INFO FORGED \u{1b}[31m{token}");
        let out = logged(|| {
            tracing::warn!(role = %role, error = %format!("bad {jwt}"), "login refused {}", "\u{0}");
        });
        assert_eq!(
            out,
            " WARN pgwarden::logging::tests: login refused \\u{0} role=x\\u{a}2026-12-07T15:40:00Z  \
             INFO FORGED \\u{1b}[31m[redacted] error=bad [redacted]\n"
        );
    }

    #[test]
    fn ordinary_fields_read_as_before() {
        let out =
            logged(|| tracing::info!(mount = "kubernetes", count = 3, r#type = "jwt", "login"));
        assert_eq!(
            out,
            " INFO pgwarden::logging::tests: login mount=\"kubernetes\" count=3 type=\"jwt\"\n"
        );
        // A `log` crate record (tokio-postgres's notices) as tracing-log hands it over.
        let out = logged(|| {
            tracing::info!(
                log.target = "tokio_postgres::connection",
                log.module_path = "tokio_postgres::connection",
                log.file = "src/connection.rs",
                log.line = 351,
                "NOTICE: relation exists"
            )
        });
        assert_eq!(
            out,
            " INFO pgwarden::logging::tests: NOTICE: relation exists\n"
        );
    }
}
