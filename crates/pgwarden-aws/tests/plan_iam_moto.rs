//! The policies [`pgwarden_aws::plan`] writes are ones IAM accepts: sent to moto's IAM (PyPI
//! `moto[server]`, which runs AWS's policy-document checks) with the calls the plan's text
//! suggests: `CreateRole`, `UpdateAssumeRolePolicy` (trust policy checked) and `PutRolePolicy`
//! (permissions policy checked). A malformed document is refused by the same calls, so the
//! check is not a no-op.

mod common;

use common::{Moto, start_moto};
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use pgwarden_aws::{PlanInput, plan};
use pgwarden_core::Preset;

/// moto's default account: the role ARN it answers with names it.
const MOTO_ACCOUNT: &str = "123456789012";

/// One IAM query-protocol call; (HTTP status, body).
async fn iam(moto: &Moto, params: &[(&str, &str)]) -> (u16, String) {
    let body: Vec<String> = params
        .iter()
        .chain(&[("Version", "2010-05-08")])
        .map(|(key, value)| format!("{key}={}", utf8_percent_encode(value, NON_ALPHANUMERIC)))
        .collect();
    // moto routes by the credential scope's service and does not check the signature.
    let response = reqwest::Client::new()
        .post(format!("{}/", moto.url))
        .header(
            "authorization",
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261125/us-east-1/iam/aws4_request, \
             SignedHeaders=host, Signature=00",
        )
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body.join("&"))
        .send()
        .await
        .expect("moto answers");
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

fn input(region: &str, service_account: &str) -> PlanInput {
    PlanInput {
        service_account: service_account.into(),
        db_user: "orders_app".into(),
        resource_id: "db-ABCDEFGHIJKLMNOPQRSTUVWXY1".into(),
        account: MOTO_ACCOUNT.into(),
        region: region.into(),
        oidc_provider: format!(
            "oidc.eks.{region}.amazonaws.com/id/0123456789ABCDEF0123456789ABCDEF"
        ),
        preset: Preset::Readonly,
        schemas: vec!["public".into()],
        role_name: None,
        database: None,
    }
}

#[tokio::test]
async fn iam_accepts_both_policies() {
    let Some(moto) = start_moto("iam_accepts_both_policies").await else {
        return;
    };
    for (region, sa) in [
        ("eu-west-1", "shop/orders-api"),
        ("cn-north-1", "shop/orders-cn"),
        ("us-gov-west-1", "shop/orders-gov"),
    ] {
        let plan = plan(&input(region, sa)).unwrap();
        let trust = serde_json::to_string(&plan.trust_policy).unwrap();
        let permissions = serde_json::to_string(&plan.permissions_policy).unwrap();
        let (status, body) = iam(
            &moto,
            &[
                ("Action", "CreateRole"),
                ("RoleName", &plan.role_name),
                ("AssumeRolePolicyDocument", &trust),
            ],
        )
        .await;
        assert_eq!(status, 200, "CreateRole {region}: {body}");
        if region == "eu-west-1" {
            assert!(
                body.contains(&format!("<Arn>{}</Arn>", plan.role_arn)),
                "{body}"
            );
        }
        let (status, body) = iam(
            &moto,
            &[
                ("Action", "UpdateAssumeRolePolicy"),
                ("RoleName", &plan.role_name),
                ("PolicyDocument", &trust),
            ],
        )
        .await;
        assert_eq!(status, 200, "UpdateAssumeRolePolicy {region}: {body}");
        let (status, body) = iam(
            &moto,
            &[
                ("Action", "PutRolePolicy"),
                ("RoleName", &plan.role_name),
                ("PolicyName", "rds-connect"),
                ("PolicyDocument", &permissions),
            ],
        )
        .await;
        assert_eq!(status, 200, "PutRolePolicy {region}: {body}");

        // The negative control: the same calls refuse a broken document.
        for (action, document) in [
            ("UpdateAssumeRolePolicy", &trust),
            ("PutRolePolicy", &permissions),
        ] {
            let broken = document.replace("\"Allow\"", "\"Maybe\"");
            assert_ne!(&broken, document);
            let mut params = vec![
                ("Action", action),
                ("RoleName", plan.role_name.as_str()),
                ("PolicyDocument", broken.as_str()),
            ];
            if action == "PutRolePolicy" {
                params.push(("PolicyName", "broken"));
            }
            let (status, body) = iam(&moto, &params).await;
            assert_eq!(status, 400, "{action} took a broken document: {body}");
            assert!(body.contains("MalformedPolicyDocument"), "{body}");
        }
    }
}
