//! Loading, layering and validating the configuration.

use super::*;

#[test]
fn defaults_are_valid() {
    Config::default().validate().unwrap();
}

#[test]
fn threshold_outside_unit_interval_names_the_key() {
    for bad in [0.0, -0.5, 1.5, f32::NAN] {
        let mut config = Config::default();
        config.cache.similarity_threshold = bad;
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("cache.similarity_threshold"), "{err}");
    }
    let mut config = Config::default();
    config.cache.model_thresholds.insert("gpt-4o".into(), 2.0);
    let err = config.validate().unwrap_err().to_string();
    assert!(err.contains("gpt-4o"), "{err}");
}

#[test]
fn per_model_threshold_overrides_default() {
    let mut cache = CacheConfig::default();
    cache.model_thresholds.insert("gpt-4o".into(), 0.99);
    assert_eq!(cache.threshold_for("gpt-4o"), 0.99);
    assert_eq!(
        cache.threshold_for("gpt-4o-mini"),
        cache.similarity_threshold
    );
}

#[test]
fn secret_debug_hides_value() {
    let secret = Secret::new("sk-very-secret");
    assert!(!format!("{secret:?}").contains("sk-very"));
}

#[test]
fn file_then_env_override() {
    figment::Jail::expect_with(|jail| {
        jail.clear_env(); // a stray DEJA_* variable must not leak in
        jail.create_file(
            "proxy.toml",
            "[cache]\nttl_secs = 60\nsimilarity_threshold = 0.9\n",
        )?;
        jail.set_env("DEJA_CACHE__TTL_SECS", "120");
        let config = Config::load(Path::new("proxy.toml")).expect("loads");
        assert_eq!(config.cache.ttl_secs, 120);
        assert_eq!(config.cache.similarity_threshold, 0.9);
        Ok(())
    });
}

#[test]
fn shipped_proxy_toml_is_valid_and_documents_every_section() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("proxy.toml");
    let shipped: Config = Figment::from(Toml::file(&path)).extract().expect("parses");
    shipped.validate().expect("valid");
    let text = std::fs::read_to_string(&path).unwrap();
    for section in [
        "[server]",
        "[upstream]",
        "[upstream.retry]",
        "[cache]",
        "[embedding]",
        "[log]",
        "[admin]",
        "[usage]",
        "[pricing.",
        "[[keys]]",
        "[routing.aliases]",
        "[routing.fallbacks]",
    ] {
        assert!(text.contains(section), "{section} missing from proxy.toml");
    }
}

#[test]
fn embedding_batching_and_dimensions_are_validated() {
    let mut config = Config::default();
    config.embedding.batch_wait_ms = 1001;
    let err = config.validate().unwrap_err().to_string();
    assert!(err.contains("embedding.batch_wait_ms"), "{err}");
    config.embedding.batch_wait_ms = 50;
    config.embedding.timeout_ms = 50;
    let err = config.validate().unwrap_err().to_string();
    assert!(err.contains("embedding.batch_wait_ms"), "{err}");
    config.embedding.timeout_ms = 2000;
    config.validate().unwrap();
    config.embedding.dimensions = Some(0);
    let err = config.validate().unwrap_err().to_string();
    assert!(err.contains("embedding.dimensions"), "{err}");
    config.embedding.dimensions = Some(512);
    config.validate().unwrap();
    // The local model has one length: asking another is a mistake, not a no-op.
    config.embedding.provider = EmbeddingProvider::Local;
    let err = config.validate().unwrap_err().to_string();
    assert!(err.contains("embedding.dimensions"), "{err}");
}

#[test]
fn local_embedding_keys_are_validated() {
    let mut config = Config::default();
    config.embedding.provider = EmbeddingProvider::Local;
    config.validate().unwrap();
    config.embedding.max_batch = 0;
    let err = config.validate().unwrap_err().to_string();
    assert!(err.contains("embedding.max_batch"), "{err}");
    config.embedding.max_batch = 8;
    config.embedding.model_dir = PathBuf::new();
    let err = config.validate().unwrap_err().to_string();
    assert!(err.contains("embedding.model_dir"), "{err}");
    // An empty model_dir does not matter to the openai provider.
    config.embedding.provider = EmbeddingProvider::Openai;
    config.validate().unwrap();
    figment::Jail::expect_with(|jail| {
        jail.clear_env(); // a stray DEJA_* variable must not leak in
        jail.create_file(
            "proxy.toml",
            "[embedding]\nprovider = \"local\"\nmodel_dir = \"/opt/minilm\"\nmax_batch = 4\n",
        )?;
        let config = Config::load(Path::new("proxy.toml")).expect("loads");
        assert_eq!(config.embedding.provider, EmbeddingProvider::Local);
        assert_eq!(config.embedding.model_dir, Path::new("/opt/minilm"));
        assert_eq!(config.embedding.max_batch, 4);
        Ok(())
    });
}

#[test]
fn upstream_key_is_refused_in_the_file_but_taken_from_env_or_a_file() {
    figment::Jail::expect_with(|jail| {
        jail.clear_env();
        jail.create_file("proxy.toml", "[upstream]\napi_key = \"sk-in-file\"\n")?;
        let err = Config::load(Path::new("proxy.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("upstream.api_key") && !err.contains("sk-in-file"),
            "{err}"
        );
        jail.create_file(
            "proxy.toml",
            "[upstream]\napi_key = \"sk-in-file\"\nallow_plaintext_key = true\n",
        )?;
        assert!(Config::load(Path::new("proxy.toml")).is_ok());
        jail.create_file("key.txt", "sk-from-file\n")?;
        jail.create_file("proxy.toml", "[upstream]\napi_key_file = \"key.txt\"\n")?;
        let config = Config::load(Path::new("proxy.toml")).expect("loads");
        assert_eq!(config.upstream.api_key.unwrap().expose(), "sk-from-file");
        jail.create_file("proxy.toml", "")?;
        jail.set_env("DEJA_UPSTREAM__API_KEY", "sk-from-env");
        let config = Config::load(Path::new("proxy.toml")).expect("loads");
        assert_eq!(config.upstream.api_key.unwrap().expose(), "sk-from-env");
        Ok(())
    });
}

#[test]
fn managed_keys_are_validated() {
    let key = KeyConfig::unlimited("alice", "sk-alice");
    let mut config = Config::default();
    config.keys.push(key.clone());
    let err = config.validate().unwrap_err().to_string();
    assert!(err.contains("upstream.api_key"), "{err}");
    config.upstream.api_key = Some(Secret::new("sk-upstream"));
    config.validate().unwrap();
    for (change, key_name) in [
        (
            Box::new(|k: &mut KeyConfig| k.hash = "sha256:abc".into())
                as Box<dyn Fn(&mut KeyConfig)>,
            "keys.alice.hash",
        ),
        (
            Box::new(|k: &mut KeyConfig| k.budget_usd = Some(1.0)),
            "keys.alice.budget_usd",
        ),
        (
            Box::new(|k: &mut KeyConfig| k.namespace = Some("a b".into())),
            "keys.alice.namespace",
        ),
    ] {
        let mut bad = config.clone();
        change(&mut bad.keys[0]);
        let err = bad.validate().unwrap_err().to_string();
        assert!(err.contains(key_name), "{err}");
    }
    config.keys.push(key);
    assert!(config.validate().unwrap_err().to_string().contains("twice"));
}

#[test]
fn dated_model_names_take_their_family_price() {
    let mut config = Config::default();
    let price = |p: f64| Price {
        input_per_mtok: p,
        output_per_mtok: p,
    };
    config.pricing.insert("gpt-4o".into(), price(1.0));
    config.pricing.insert("gpt-4o-mini".into(), price(2.0));
    assert_eq!(
        config
            .price("gpt-4o-mini-2024-07-18")
            .unwrap()
            .input_per_mtok,
        2.0
    );
    assert_eq!(
        config.price("gpt-4o-2024-08-06").unwrap().input_per_mtok,
        1.0
    );
    assert!(config.price("gpt-4").is_none());
    assert!(config.price("gpt-4omni").is_none());
}

#[test]
fn capacity_caps_are_validated() {
    let mut config = Config::default();
    config.cache.max_entries = 1;
    config.cache.max_bytes = 64 * 1024;
    config.validate().unwrap();
    config.cache.max_bytes = 1000;
    let err = config.validate().unwrap_err().to_string();
    assert!(err.contains("cache.max_bytes"), "{err}");
}

#[test]
fn unknown_key_is_refused() {
    figment::Jail::expect_with(|jail| {
        jail.clear_env(); // a stray DEJA_* variable must not leak in
        jail.create_file("proxy.toml", "[cache]\nttl = 60\n")?;
        assert!(Config::load(Path::new("proxy.toml")).is_err());
        Ok(())
    });
}

#[test]
fn hnsw_settings_outside_their_ranges_name_the_key() {
    type Break = fn(&mut CacheConfig);
    let cases: [(&str, Break); 4] = [
        ("cache.hnsw_m", |c| c.hnsw_m = 1),
        ("cache.hnsw_m", |c| c.hnsw_m = 1000),
        ("cache.hnsw_ef_construction", |c| c.hnsw_ef_construction = 0),
        ("cache.hnsw_ef_search", |c| c.hnsw_ef_search = 0),
    ];
    for (key, break_it) in cases {
        let mut config = Config::default();
        break_it(&mut config.cache);
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains(key), "{key}: {err}");
    }
}

#[test]
fn hnsw_settings_come_from_the_file() {
    figment::Jail::expect_with(|jail| {
        jail.clear_env();
        jail.create_file(
            "proxy.toml",
            "[cache]\nhnsw_m = 24\nhnsw_ef_construction = 100\nhnsw_ef_search = 64\n",
        )?;
        let config = Config::load(Path::new("proxy.toml")).expect("valid");
        let cache = &config.cache;
        assert_eq!(
            (
                cache.hnsw_m,
                cache.hnsw_ef_construction,
                cache.hnsw_ef_search
            ),
            (24, 100, 64)
        );
        Ok(())
    });
}
