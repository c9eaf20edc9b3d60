//! The `gqa-convert` binary on synthetic checkpoints written here by hand
//! (the safetensors format is 8 bytes of header length, a JSON header and
//! the data): Llama-style and T5-style names, f32/f16/bf16, with and
//! without biases, single-file and sharded. Pooled tensors must equal a
//! literal mean rounded once, every other tensor must be byte-identical,
//! `config.json` and the index must be updated, and every bad input must
//! exit non-zero with a message and leave no output behind.

mod common;

use common::*;

#[test]
fn llama_single_file_every_dtype_with_and_without_bias() {
    for ty in [Ty::F32, Ty::F16, Ty::Bf16] {
        for bias in [false, true] {
            let dir = tmpdir(&format!("llama-{}-{bias}", ty.name()));
            let (h, g, d, dm) = (8, 2, 4, 6);
            let src = llama(ty, 2, h, d, dm, bias);
            let meta = json!({"format": "pt"});
            write_st(&dir.join("in.safetensors"), &src, Some(meta.clone()));
            let config = json!({"num_attention_heads": 16, "num_key_value_heads": h,
                "hidden_size": dm, "architectures": ["LlamaForCausalLM"]});
            std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
            let out_dir = dir.join("out");
            std::fs::create_dir(&out_dir).unwrap();
            let out = out_dir.join("model.safetensors");
            ok(&run(&[
                &dir.join("in.safetensors"),
                &"-o",
                &out,
                &"-g",
                &"2",
            ]));

            let (got, got_meta) = read_st(&out);
            assert_eq!(got_meta, Some(meta));
            assert_eq!(
                got.keys().collect::<Vec<_>>(),
                src.keys().collect::<Vec<_>>()
            );
            for (name, t) in &src {
                if is_kv(name) {
                    assert_eq!(got[name], literal_mean(ty, t, h, g), "{name} ({ty:?})");
                } else {
                    assert_eq!(&got[name], t, "{name} must be copied unchanged");
                }
            }
            let c: Value = serde_json::from_str(
                &std::fs::read_to_string(out_dir.join("config.json")).unwrap(),
            )
            .unwrap();
            let mut want = config.clone();
            want["num_key_value_heads"] = json!(g);
            assert_eq!(c, want);
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }
}

#[test]
fn g_equal_h_is_the_identity_and_first_head_pooling() {
    let dir = tmpdir("identity");
    let src = llama(Ty::Bf16, 1, 4, 8, 16, true);
    write_st(&dir.join("m.safetensors"), &src, None);
    let out = dir.join("same.safetensors");
    ok(&run(&[
        &dir.join("m.safetensors"),
        &"-o",
        &out,
        &"-g",
        &"4",
        &"--heads",
        &"4",
    ]));
    assert_eq!(read_st(&out).0, src);

    // --pooling first keeps head g·r of each group.
    let out = dir.join("first.safetensors");
    ok(&run(&[
        &dir.join("m.safetensors"),
        &"-o",
        &out,
        &"-g",
        &"2",
        &"--heads",
        &"4",
        &"--pooling",
        &"first",
    ]));
    let got = read_st(&out).0;
    let k = &src["model.layers.0.self_attn.k_proj.weight"];
    let row = 16 * 2; // bytes of one row of 16 bf16
    let want: Vec<u8> = [0usize, 2]
        .iter()
        .flat_map(|&head| k.data[head * 8 * row..(head + 1) * 8 * row].to_vec())
        .collect();
    assert_eq!(got["model.layers.0.self_attn.k_proj.weight"].data, want);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn gqa_source_to_fewer_groups_and_custom_pattern() {
    let dir = tmpdir("gqa-source");
    // Already GQA: 4 KV heads (num_key_value_heads) for 12 query heads; to 1
    // (MQA). BERT-like names through a custom pattern.
    let (h, d, dm) = (4, 3, 5);
    let mut src = BTreeMap::new();
    for i in 0..3 {
        for (j, kv) in ["key", "value", "query"].iter().enumerate() {
            let rows = if *kv == "query" { 3 * h * d } else { h * d };
            src.insert(
                format!("encoder.layer.{i}.attention.self.{kv}.weight"),
                tensor(Ty::F32, &[rows, dm], (10 * i + j) as u64),
            );
        }
    }
    write_st(&dir.join("b.safetensors"), &src, None);
    std::fs::write(
        dir.join("config.json"),
        json!({"num_attention_heads": 12, "num_key_value_heads": h}).to_string(),
    )
    .unwrap();
    let out = dir.join("out").join("b.safetensors");
    std::fs::create_dir(dir.join("out")).unwrap();
    let pat = "encoder.layer.{i}.attention.self.{kv:key,value}.weight";
    ok(&run(&[
        &dir.join("b.safetensors"),
        &"-o",
        &out,
        &"-g",
        &"1",
        &"--pattern",
        &pat,
    ]));
    let got = read_st(&out).0;
    for (name, t) in &src {
        if name.contains("query") {
            assert_eq!(&got[name], t);
        } else {
            assert_eq!(got[name], literal_mean(Ty::F32, t, h, 1), "{name}");
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn t5_sharded_with_index() {
    let dir = tmpdir("t5");
    let input = dir.join("in");
    std::fs::create_dir(&input).unwrap();
    let (h, g, d, dm) = (6, 3, 4, 8);
    let mut shards = [BTreeMap::new(), BTreeMap::new()];
    let mut weight_map = serde_json::Map::new();
    let mut seed = 100;
    let mut names = vec!["shared.weight".to_string()];
    for i in 0..2 {
        for kv in ["q", "k", "v", "o"] {
            names.push(format!(
                "encoder.block.{i}.layer.0.SelfAttention.{kv}.weight"
            ));
            names.push(format!(
                "decoder.block.{i}.layer.0.SelfAttention.{kv}.weight"
            ));
            names.push(format!(
                "decoder.block.{i}.layer.1.EncDecAttention.{kv}.weight"
            ));
        }
    }
    for (n, name) in names.iter().enumerate() {
        seed += 1;
        let shape = if name.starts_with("shared") {
            [10, dm]
        } else {
            [h * d, dm]
        };
        // Layer 1's K and V land in different shards on purpose.
        let s = n % 2;
        shards[s].insert(name.clone(), tensor(Ty::F16, &shape, seed));
        weight_map.insert(
            name.clone(),
            json!(format!("model-0000{}-of-00002.safetensors", s + 1)),
        );
    }
    for (s, m) in shards.iter().enumerate() {
        write_st(
            &input.join(format!("model-0000{}-of-00002.safetensors", s + 1)),
            m,
            Some(json!({"format": "pt"})),
        );
    }
    let total: usize = shards
        .iter()
        .flat_map(|m| m.values())
        .map(|t| t.data.len())
        .sum();
    let index = json!({"metadata": {"total_size": total}, "weight_map": weight_map});
    std::fs::write(
        input.join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();
    std::fs::write(
        input.join("config.json"),
        json!({"num_heads": h, "d_kv": d}).to_string(),
    )
    .unwrap();

    let out = dir.join("out");
    ok(&run(&[
        &input,
        &"-o",
        &out,
        &"-g",
        &g.to_string(),
        &"--preset",
        &"t5",
    ]));
    let mut pooled_bytes = 0;
    for (s, m) in shards.iter().enumerate() {
        let got = read_st(&out.join(format!("model-0000{}-of-00002.safetensors", s + 1))).0;
        assert_eq!(got.keys().collect::<Vec<_>>(), m.keys().collect::<Vec<_>>());
        for (name, t) in m {
            let converted = name.starts_with("decoder")
                && (name.ends_with(".k.weight") || name.ends_with(".v.weight"));
            if converted {
                assert_eq!(got[name], literal_mean(Ty::F16, t, h, g), "{name}");
            } else {
                // Encoder self-attention stays MHA, as in the paper.
                assert_eq!(&got[name], t, "{name}");
            }
            pooled_bytes += got[name].data.len();
        }
    }
    let new_index: Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("model.safetensors.index.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(new_index["weight_map"], index["weight_map"]);
    assert_eq!(new_index["metadata"]["total_size"], json!(pooled_bytes));
    let c: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(c["num_key_value_heads"], json!(g));
    assert_eq!(c["num_heads"], json!(h));
    std::fs::remove_dir_all(&dir).unwrap();
}
