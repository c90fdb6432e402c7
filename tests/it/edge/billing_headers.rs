//! Managed mode: the caller's organization and project do not choose what deja's key bills.

use crate::support::admin::{UPSTREAM_KEY, key, managed};
use crate::support::fake_upstream::CHAT_PATH;
use crate::support::proxy::{Harness, KEY_A, ask};

const ALICE: &str = "sk-deja-alice-secret";
const BILLING: [(&str, &str); 2] = [
    ("OpenAI-Organization", "org-chosen-by-caller"),
    ("OpenAI-Project", "proj_chosen_by_caller"),
];

#[tokio::test]
async fn managed_mode_keeps_organization_and_project_at_deja() {
    let h = managed(vec![key("alice", ALICE)], |_| {}).await;
    let reply = h.chat_with(ALICE, &BILLING, &ask("hello")).await;
    assert_eq!(reply.status(), 200);
    let mut models = h.client.get(h.url("/v1/models")).bearer_auth(ALICE);
    for (name, value) in BILLING {
        models = models.header(name, value);
    }
    assert_eq!(models.send().await.unwrap().status(), 200);
    let requests = h.upstream.requests();
    assert_eq!(h.upstream.calls(CHAT_PATH), 1);
    assert_eq!(h.upstream.calls("/v1/models"), 1);
    for request in requests {
        assert_eq!(
            request.headers["authorization"],
            format!("Bearer {UPSTREAM_KEY}").as_str()
        );
        for (name, _) in BILLING {
            assert!(
                request.headers.get(name).is_none(),
                "{name} reached {}",
                request.path
            );
        }
    }
}

#[tokio::test]
async fn callers_own_keys_keep_their_organization_and_project() {
    let h = Harness::start().await;
    assert_eq!(
        h.chat_with(KEY_A, &BILLING, &ask("hello")).await.status(),
        200
    );
    let request = h.upstream.last_request(CHAT_PATH).unwrap();
    for (name, value) in BILLING {
        assert_eq!(request.headers[name], value);
    }
}
