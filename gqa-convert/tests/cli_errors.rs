//! The `gqa-convert` binary on bad input: every bad argument, missing or
//! malformed file and unsupported tensor exits non-zero with a message
//! naming it and leaves no output behind.

mod common;

use common::*;

/// Every bad input exits non-zero with a message and leaves the directory
/// as it was.
///
/// Long on purpose: a list of cases, not a procedure. Each bad input is
/// a few lines (the call, the error it must give, and that nothing was
/// written), so the function is as long as the list.
#[test]
fn bad_input_exits_non_zero_and_leaves_nothing() {
    let dir = tmpdir("errors");
    let src = llama(Ty::F16, 1, 6, 4, 8, false);
    let input = dir.join("m.safetensors");
    write_st(&input, &src, None);
    let out = dir.join("o.safetensors");
    let before = listing(&dir);

    // Each with the input and output above and these flags.
    let cases: [(&[&str], &str); 6] = [
        // H % G != 0.
        (&["-g", "4", "--heads", "6"], "groups"),
        // G = 0.
        (&["-g", "0", "--heads", "6"], "groups"),
        // No config and no --heads.
        (&["-g", "2"], "--heads"),
        // A pattern matching nothing (the T5 preset on Llama names).
        (
            &["-g", "2", "--heads", "6", "--preset", "t5"],
            "no tensor matches",
        ),
        // A pattern without {kv}.
        (&["-g", "2", "--heads", "6", "--pattern", "model.*"], "{kv}"),
        // Rows not a multiple of H.
        (&["-g", "1", "--heads", "5"], "not H·D"),
    ];
    for (flags, what) in cases {
        let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&input, &"-o", &out];
        args.extend(flags.iter().map(|f| f as &dyn AsRef<std::ffi::OsStr>));
        fails(&run(&args), what, &dir, &before);
    }
    // K and V of different shapes.
    let mut odd = src.clone();
    odd.insert(
        "model.layers.0.self_attn.v_proj.weight".into(),
        tensor(Ty::F16, &[24, 7], 9),
    );
    let odd_in = dir.join("odd.safetensors");
    write_st(&odd_in, &odd, None);
    let before = listing(&dir);
    fails(
        &run(&[&odd_in, &"-o", &out, &"-g", &"2", &"--heads", &"6"]),
        "K and V differ",
        &dir,
        &before,
    );
    // Not a safetensors file.
    let junk = dir.join("junk.safetensors");
    std::fs::write(&junk, b"this is not a checkpoint at all").unwrap();
    let before = listing(&dir);
    fails(
        &run(&[&junk, &"-o", &out, &"-g", &"2", &"--heads", &"6"]),
        "not a safetensors file",
        &dir,
        &before,
    );
    // A missing input.
    fails(
        &run(&[
            &dir.join("nope.safetensors"),
            &"-o",
            &out,
            &"-g",
            &"2",
            &"--heads",
            &"6",
        ]),
        "no such file",
        &dir,
        &before,
    );
    // An existing output is refused without --force, and left untouched.
    std::fs::write(&out, b"keep me").unwrap();
    let before = listing(&dir);
    fails(
        &run(&[&input, &"-o", &out, &"-g", &"2", &"--heads", &"6"]),
        "--force",
        &dir,
        &before,
    );
    assert_eq!(std::fs::read(&out).unwrap(), b"keep me");
    // Overwriting an input is refused even with --force.
    fails(
        &run(&[
            &input, &"-o", &input, &"-g", &"2", &"--heads", &"6", &"--force",
        ]),
        "overwrite an input",
        &dir,
        &before,
    );
    // A file output beside the input's config.json would overwrite it.
    std::fs::write(dir.join("config.json"), r#"{"num_key_value_heads": 6}"#).unwrap();
    let fresh = dir.join("fresh.safetensors");
    let before = listing(&dir);
    fails(
        &run(&[&input, &"-o", &fresh, &"-g", &"2"]),
        "overwrite an input",
        &dir,
        &before,
    );
    std::fs::remove_file(dir.join("config.json")).unwrap();
    // A directory output for a sharded input that already exists.
    let existing = dir.join("existing");
    std::fs::create_dir(&existing).unwrap();
    std::fs::create_dir(dir.join("srcdir")).unwrap();
    write_st(&dir.join("srcdir").join("model.safetensors"), &src, None);
    let before = listing(&dir);
    fails(
        &run(&[
            &dir.join("srcdir"),
            &"-o",
            &existing,
            &"-g",
            &"2",
            &"--heads",
            &"6",
        ]),
        "--force",
        &dir,
        &before,
    );
    // A projection of a type that cannot be pooled.
    let mut bad = src.clone();
    bad.insert(
        "model.layers.0.self_attn.k_proj.weight".into(),
        Tensor {
            dtype: "I32".into(),
            shape: vec![24, 4],
            data: vec![0; 24 * 4 * 4],
        },
    );
    bad.insert(
        "model.layers.0.self_attn.v_proj.weight".into(),
        Tensor {
            dtype: "I32".into(),
            shape: vec![24, 4],
            data: vec![0; 24 * 4 * 4],
        },
    );
    write_st(&dir.join("srcdir").join("model.safetensors"), &bad, None);
    let before = listing(&dir);
    fails(
        &run(&[
            &dir.join("srcdir"),
            &"-o",
            &dir.join("fresh"),
            &"-g",
            &"2",
            &"--heads",
            &"6",
        ]),
        "F32, F16 or BF16",
        &dir,
        &before,
    );

    // --force overwrites.
    ok(&run(&[
        &input, &"-o", &out, &"-g", &"2", &"--heads", &"6", &"--force",
    ]));
    assert_eq!(read_st(&out).0.len(), src.len());
    // A usage error (no --groups) is exit code 2.
    assert_eq!(run(&[&input, &"-o", &out]).status.code(), Some(2));
    std::fs::remove_dir_all(&dir).unwrap();
}
