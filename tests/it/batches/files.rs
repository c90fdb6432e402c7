//! Files deja keeps for batches: deleting them, their retention, the files list, and polls
//! of several batches at once.

use super::*;

async fn delete(h: &Harness, key: &str, path: &str) -> (u16, Value) {
    let response = h
        .client
        .delete(h.url(path))
        .bearer_auth(key)
        .send()
        .await
        .expect("delete");
    let status = response.status().as_u16();
    (status, response.json().await.expect("json"))
}

#[tokio::test]
async fn a_deja_file_can_be_deleted_by_its_tenant_only() {
    let h = harness().await;
    h.chat(&ask(CACHED_A)).await;
    let file = upload(&h, KEY_A, &jsonl(&[line("1", CACHED_A)])).await;
    let (_, batch) = create(&h, KEY_A, &file).await;
    let output = batch["output_file_id"].as_str().unwrap();
    let path = format!("/v1/files/{output}");
    let (status, _) = delete(&h, KEY_B, &path).await;
    assert_eq!(status, 404);
    let (status, body) = delete(&h, KEY_A, &path).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"id": output, "object": "file", "deleted": true})
    );
    for path in [path.clone(), format!("{path}/content")] {
        let (status, text) = get(&h, KEY_A, &path).await;
        assert_eq!(status, 404, "{path}: {text}");
    }
    let (status, _) = delete(&h, KEY_A, &path).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn batches_and_their_files_expire_after_the_retention() {
    const RETENTION: u64 = 3600;
    let h = Harness::with(|c| {
        with_admin(c);
        c.cache.sweep_interval_secs = 1;
        c.jobs.batch_retention_secs = RETENTION;
    })
    .await;
    h.upstream.set_deterministic(true);
    h.chat(&ask(CACHED_A)).await;
    let file = upload(&h, KEY_A, &jsonl(&[line("1", CACHED_A)])).await;
    let (_, batch) = create(&h, KEY_A, &file).await;
    assert_eq!(batch["status"], "completed", "{batch}");
    let id = batch["id"].as_str().unwrap();
    let output = batch["output_file_id"].as_str().unwrap();
    let (_, text) = get(&h, KEY_A, &format!("/v1/files/{output}")).await;
    let object: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        object["expires_at"].as_u64(),
        Some(object["created_at"].as_u64().unwrap() + RETENTION)
    );
    let store = h.proxy.batches.clone().expect("batch store");
    assert_eq!(store.held(), (1, 1));

    // A minute short of the retention: all still there, through a sweep or two.
    h.clock.advance(Duration::from_secs(RETENTION - 60));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(store.held(), (1, 1));
    let paths = [
        format!("/v1/batches/{id}"),
        format!("/v1/files/{output}"),
        format!("/v1/files/{output}/content"),
    ];
    for path in &paths {
        assert_eq!(get(&h, KEY_A, path).await.0, 200, "{path}");
    }

    h.clock.advance(Duration::from_secs(60));
    for path in &paths {
        assert_eq!(get(&h, KEY_A, path).await.0, 404, "{path}");
    }
    let (_, list) = get(&h, KEY_A, "/v1/batches").await;
    assert_eq!(
        serde_json::from_str::<Value>(&list).unwrap()["data"],
        json!([])
    );
    // And the sweep removes them from disk.
    for _ in 0..100 {
        if store.held() == (0, 0) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("not swept: {:?}", store.held());
}

/// How many `GET` requests the fake upstream has seen on paths starting with `prefix` and
/// ending with `suffix`.
fn upstream_gets(h: &Harness, prefix: &str, suffix: &str) -> usize {
    h.upstream
        .requests()
        .iter()
        .filter(|r| r.method == "GET" && r.path.starts_with(prefix) && r.path.ends_with(suffix))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polls_of_two_batches_go_side_by_side_and_one_batch_is_merged_once() {
    let h = harness().await;
    h.upstream.set_batch_polls(2);
    let mut ids = Vec::new();
    for question in [NEW_C, NEW_D] {
        let file = upload(&h, KEY_A, &jsonl(&[line("1", question)])).await;
        let (_, batch) = create(&h, KEY_A, &file).await;
        ids.push(batch["id"].as_str().unwrap().to_string());
    }
    let poll = |id: &str| {
        let request = h
            .client
            .get(h.url(&format!("/v1/batches/{id}")))
            .bearer_auth(KEY_A);
        tokio::spawn(async move {
            let response = request.send().await.expect("poll");
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.expect("json"))
        })
    };

    // A poll of the first batch waits on a slow upstream...
    h.upstream.stall_next_batch_retrieve(Duration::from_secs(3));
    let slow = poll(&ids[0]);
    while upstream_gets(&h, "/v1/batches/", "") == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // ...and a poll of the second is answered meanwhile.
    let (status, text) = get(&h, KEY_A, &format!("/v1/batches/{}", ids[1])).await;
    assert_eq!(status, 200, "{text}");
    assert!(
        !slow.is_finished(),
        "the second batch's poll waited for the first's"
    );
    assert_eq!(slow.await.unwrap().0, 200);

    // Two polls of the batch as it ends: one merges, the other gets its result.
    h.upstream
        .stall_next_batch_retrieve(Duration::from_millis(500));
    let (first, second) = (poll(&ids[0]), poll(&ids[0]));
    let (first, second) = (first.await.unwrap().1, second.await.unwrap().1);
    assert_eq!(first["status"], "completed", "{first}");
    assert_eq!(second["status"], "completed", "{second}");
    assert_eq!(first["output_file_id"], second["output_file_id"]);
    // The two creates read their inputs; the merge read the output once.
    assert_eq!(upstream_gets(&h, "/v1/files/", "/content"), 3);
}

#[tokio::test]
async fn the_files_list_holds_the_callers_deja_files_beside_the_upstreams() {
    let h = harness().await;
    h.chat(&ask(CACHED_A)).await;
    let input = upload(&h, KEY_A, &jsonl(&[line("1", CACHED_A)])).await;
    let (_, batch) = create(&h, KEY_A, &input).await;
    let output = batch["output_file_id"].as_str().unwrap().to_string();
    let list = |key: &'static str, query: &'static str| {
        let h = &h;
        async move {
            let (status, text) = get(h, key, &format!("/v1/files{query}")).await;
            assert_eq!(status, 200, "{text}");
            let list: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(list["object"], "list");
            let ids: Vec<String> = list["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| f["id"].as_str().unwrap().to_string())
                .collect();
            (ids, list)
        }
    };
    let (ids, all) = list(KEY_A, "").await;
    assert_eq!(ids.len(), 2, "{all}");
    assert!(ids.contains(&input) && ids.contains(&output), "{all}");
    assert_eq!(all["has_more"], false);
    assert_eq!(all["first_id"], ids[0].as_str());
    // Another tenant's list has the upstream's files only.
    let (ids, _) = list(KEY_B, "").await;
    assert_eq!(ids, std::slice::from_ref(&input));
    // The purpose filter applies to both.
    assert_eq!(
        list(KEY_A, "?purpose=batch").await.0,
        std::slice::from_ref(&input)
    );
    let outputs = list(KEY_A, "?purpose=batch_output").await.0;
    assert_eq!(outputs, std::slice::from_ref(&output));
    // Pages over the merged list.
    let (first, page) = list(KEY_A, "?limit=1").await;
    assert_eq!(page["has_more"], true);
    let (_, rest) = get(&h, KEY_A, &format!("/v1/files?limit=1&after={}", first[0])).await;
    let rest: Value = serde_json::from_str(&rest).unwrap();
    assert_eq!(rest["has_more"], false);
    let second = rest["data"][0]["id"].as_str().unwrap();
    assert_ne!(second, first[0]);
    assert!([&input, &output].contains(&&second.to_string()));
}
