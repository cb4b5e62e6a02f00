"""The `hskcache` commands: documented output, and one red line + exit 1 for bad input."""

import json

import pytest
import torch
from typer.testing import CliRunner

from hskcache.cli import app
from hskcache.reader import open_cache

runner = CliRunner()


def build_args(data, out, teacher, *extra):
    return [
        "build",
        "--data",
        str(data),
        "--out",
        str(out),
        "--teacher",
        str(teacher),
        "--max-length",
        "16",
        "--hsk",
        "1l_4t_0.25h",
        "--quiet",
        *extra,
    ]


def test_build_inspect_verify(tmp_path, sst2_dir, tiny_bert):
    out = tmp_path / "c"
    r = runner.invoke(app, build_args(sst2_dir, out, tiny_bert, "--limit", "20"))
    assert r.exit_code == 0, r.output
    assert "complete" in r.output
    r = runner.invoke(app, ["inspect", str(out), "--json"])
    info = json.loads(r.output)
    assert info["status"] == "complete" and info["counts"]["num_examples"] == 20
    assert info["selection"]["config"] == "1l_4t_0.25h"
    assert {a["name"] for a in info["arrays"]} >= {"input_ids", "layers/h1/values"}
    assert info["total_bytes"] > 0 and 0 < info["stats"]["hsk_fraction"] < 1
    r = runner.invoke(app, ["inspect", str(out)])
    assert r.exit_code == 0 and "HSK kept" in r.output
    r = runner.invoke(app, ["verify", str(out), "--quiet"])
    assert r.exit_code == 0 and "ok" in r.output


FULL_OF_2 = ["--hsk", "full", "--student-layers", "2", "--l-top", "2"]  # states 0, 1, 2


@pytest.mark.parametrize("extra", [[], ["--value-dtype", "int8"], FULL_OF_2])
def test_inspect_stats_are_fits_reference_losses(tmp_path, sst2_dir, tiny_bert, extra):
    """--stats' zero-prediction loss is what fit's HSK loss gives a projection that outputs
    zeros, and the teacher entropy is the soft cross-entropy of the teacher against itself:
    both over the whole cache as one batch, int8 values and full width included."""
    import torch

    from hsktrain.batch import from_cache
    from hsktrain.losses import hsk_layer_loss, soft_cross_entropy

    out = tmp_path / "c"
    assert runner.invoke(app, build_args(sst2_dir, out, tiny_bert, *extra)).exit_code == 0
    r = runner.invoke(app, ["inspect", str(out), "--stats", "--json"])
    assert r.exit_code == 0, r.output
    targets = json.loads(r.output)["targets"]
    cache = open_cache(out)
    batch = from_cache(cache.read(0, cache.num_examples), cache.manifest, "cpu")
    zero = torch.nn.Linear(8, cache.info.teacher.hidden_size)
    torch.nn.init.zeros_(zero.weight)
    torch.nn.init.zeros_(zero.bias)
    hidden = torch.randn(cache.num_examples, 16, 8)
    losses = [
        hsk_layer_loss(hidden, zero, la.positions, la.values, la.dims, zero.out_features).item()
        for la in batch.layers
    ]
    assert [la["zero_prediction_loss"] for la in targets["layers"]] == pytest.approx(losses)
    assert len(losses) == (3 if extra == FULL_OF_2 else 1)
    assert targets["zero_prediction_loss"] == pytest.approx(sum(losses)) and sum(losses) > 0
    entropy = soft_cross_entropy(batch.logits, batch.logits, 1.0).item()
    assert targets["teacher_entropy"] == pytest.approx(entropy, rel=1e-5)
    agree = (batch.logits.argmax(-1) == batch.labels).float().mean().item()
    assert targets["teacher_label_accuracy"] == pytest.approx(agree)
    r = runner.invoke(app, ["inspect", str(out), "--stats"])
    assert "loss of an all-zero prediction" in r.output and "teacher entropy" in r.output


def test_config_file(tmp_path, sst2_dir, tiny_bert):
    toml = tmp_path / "b.toml"
    toml.write_text(
        f'data = "{sst2_dir}"\nout = "{tmp_path / "c"}"\nteacher = "{tiny_bert}"\n'
        'hsk = "1l_2t_0.5h"\nmax_length = 16\nlimit = 5\n'
    )
    assert runner.invoke(app, ["build", "--config", str(toml), "--quiet"]).exit_code == 0
    assert open_cache(tmp_path / "c").manifest["selection"]["name"] == "1l_2t_0.5h"
    toml.write_text(toml.read_text() + "colour = 3\n")
    r = runner.invoke(app, ["build", "--config", str(toml), "--quiet"])
    assert r.exit_code == 1 and "unknown config keys ['colour']" in r.output


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--hsk", "1l_10t_0.1"], "bad HSK config '1l_10t_0.1'"),
        (["--max-length", "400"], "max length 400 is outside"),
        (["--text-column", "txt"], "no column 'txt'"),
        (["--hsk", "1l_40t_0.1h"], "keeps 40 tokens but max length is 16"),
        (["--hsk", "full"], "states 0 and 1 both pair with teacher state 0"),
        (["--value-dtype", "fp8"], "value_dtype must be one of"),
        (["--batch-order", "sorted"], "batch_order must be one of ['length', 'data']"),
    ],
)
def test_bad_input_one_line(tmp_path, sst2_dir, tiny_bert, extra, message):
    out = tmp_path / "c"
    data = sst2_dir / "train.tsv" if "--text-column" in extra else sst2_dir
    args = build_args(data, out, tiny_bert, "--task", "sst2", *extra)
    r = runner.invoke(app, args)
    assert r.exit_code == 1
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], r.output
    assert not (out / "zarr.json").exists()  # nothing that could look complete


def test_bad_paths(tmp_path, sst2_dir, tiny_bert):
    r = runner.invoke(app, build_args(tmp_path / "nope.tsv", tmp_path / "c", tiny_bert))
    assert r.exit_code == 1 and "nope.tsv: no such file" in r.output
    r = runner.invoke(app, build_args(sst2_dir, tmp_path / "c", tmp_path))
    assert r.exit_code == 1 and "not a Hugging Face model folder" in r.output
    r = runner.invoke(app, ["inspect", str(tmp_path / "none")])
    assert r.exit_code == 1 and "no cache here" in r.output
    r = runner.invoke(app, ["verify", str(tmp_path)])
    assert r.exit_code == 1 and "no cache here" in r.output


def test_eval_takes_table_columns(tmp_path, sst2_dir, tiny_bert):
    """`hsktrain eval` reads a custom table's columns as `build` does: same rows, same score."""
    from conftest import SENTENCES
    from hsktrain.cli import app as train_app

    table = tmp_path / "reviews.tsv"
    rows = [f"{i}\t{s} \t{y}" for i, (s, y) in enumerate(SENTENCES)]
    table.write_text("id\tcontent\tstars\n" + "\n".join(rows) + "\n")
    r = runner.invoke(train_app, ["eval", str(tiny_bert), "--data", str(table), "--json"])
    assert r.exit_code == 1 and "no column 'text'" in r.output
    args = ["--text-column", "content", "--label-column", "stars", "--json"]
    r = runner.invoke(train_app, ["eval", str(tiny_bert), "--data", str(table), *args])
    assert r.exit_code == 0, r.output
    custom = json.loads(r.output)
    r = runner.invoke(train_app, ["eval", str(tiny_bert), "--data", str(sst2_dir), "--json"])
    glue = json.loads(r.output)
    assert custom["task"] == "custom" and custom["examples"] == len(SENTENCES)
    assert custom["metrics"] == glue["metrics"]


def test_eval_warns_of_a_model_that_answers_one_class(tmp_path, mrpc_dir, tiny_bert):
    """A model that says "equivalent" for every pair scores exactly the one-answer floor that
    `eval` gives beside its scores (the majority's accuracy, always-positive F1) and is warned."""
    from transformers import AutoTokenizer, BertForSequenceClassification

    from conftest import SENTENCES
    from hsktrain.cli import app as train_app

    model = BertForSequenceClassification.from_pretrained(tiny_bert)
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(torch.tensor([-10.0, 10.0]))
    model.save_pretrained(tmp_path / "yes")
    AutoTokenizer.from_pretrained(tiny_bert).save_pretrained(tmp_path / "yes")
    share = sum(y for _, y in SENTENCES) / len(SENTENCES)  # dev pairs labelled "equivalent"
    args = ["eval", str(tmp_path / "yes"), "--data", str(mrpc_dir)]
    r = runner.invoke(train_app, [*args, "--json"])
    assert r.exit_code == 0, r.output
    got = json.loads(r.output)
    floor = {"accuracy": max(share, 1 - share), "f1": 2 * share / (1 + share)}
    assert got["one_answer"] == pytest.approx(floor)
    assert got["metrics"] == pytest.approx({"accuracy": share, "f1": floor["f1"]})
    assert got["warning"] == (
        f"dev f1 {floor['f1']:.4f} and accuracy {share:.4f} are not 1 point above answering one "
        f"class for every row ({floor['f1']:.4f}, {floor['accuracy']:.4f}): it learned no more "
        "than the label prior"
    )
    out = " ".join(runner.invoke(train_app, args).output.split())
    assert "one class for every row" in out and f"warning: {got['warning']}" in out


def wide_help(app_, *args) -> str:
    """A command's --help, wide enough that no default is folded over two lines."""
    r = runner.invoke(app_, [*args, "--help"], env={"COLUMNS": "240", "TERMINAL_WIDTH": "240"})
    assert r.exit_code == 0, r.output
    return " ".join(r.output.split())


def test_help_shows_real_defaults():
    """Options default to None (so TOML can fill them) but --help shows the config's default."""
    from hsktrain.cli import app as train_app

    build = wide_help(app, "build")
    assert "[default: 1l_10t_0.1h]" in build and "[default: attention-no-sep]" in build
    assert "[default: 2/3 of the teacher's depth]" in build  # what None means, in words
    fit = wide_help(train_app, "fit")
    assert "[default: full4]" in fit and "[default: 5e-05]" in fit
    assert "[default: verify]" in fit and "[default: no-kept-only]" in fit  # bool flags too
    assert "[default: train]" in fit  # a default that FitConfig resolves after validation
    derive = wide_help(app, "derive")
    assert "[default: the source's]" in derive and "[default: 1l_10t_0.1h]" not in derive
    assert "[default: dev]" in wide_help(train_app, "eval")


def test_help_leaves_parsing_defaults_alone():
    """The defaults shown in --help are put back: an option the user leaves out stays None."""
    import typer.main

    from hsktrain.cli import app as train_app

    command = typer.main.get_command(train_app).commands["fit"]
    ctx = command.make_context("fit", ["--out", "x"])
    command.get_help(ctx)
    defaults = {p.name: p.default for p in command.params}
    assert defaults["student"] is None and defaults["hsk_lr"] is None
    assert defaults["verify"] is None


def test_shared_options_have_one_help_text():
    """A flag both CLIs take means the same thing: the same help in every command."""
    import typer.main

    from hsktrain.cli import app as train_app

    shared = {
        "data",
        "task",
        "split",
        "limit",
        "text_column",
        "text_pair_column",
        "label_column",
        "max_length",
        "hsk",
        "length",
        "width_strategy",
        "score_layer",
        "student_layers",
        "l_top",
        "teacher_layers",
        "seed",
        "device",
        "dtype",
        "quiet",
        "config",
    }
    helps: dict[str, set[str]] = {}
    seen: dict[str, int] = {}
    groups = [typer.main.get_command(cli) for cli in (app, train_app)]
    groups.append(groups[1].commands["bench"])  # bench step|build|e2e
    for group in groups:
        for name, command in group.commands.items():
            if name == "sweep":
                continue  # its --config is a study file, its options grid axes
            for p in command.params:
                if p.name in shared:
                    helps.setdefault(p.name, set()).add(p.help)
                    seen[p.name] = seen.get(p.name, 0) + 1
    assert {k: v for k, v in helps.items() if len(v) > 1} == {}
    assert seen["hsk"] >= 4 and seen["data"] >= 4 and seen["device"] >= 4


def test_flag_overrides_file_and_file_fills_the_rest(tmp_path, sst2_dir, tiny_bert):
    """A flag given beats the TOML file; a flag left out (default shown in --help) does not."""
    toml = tmp_path / "b.toml"
    toml.write_text(
        f'data = "{sst2_dir}"\nteacher = "{tiny_bert}"\nhsk = "1l_2t_0.5h"\nlength = "left"\n'
        "max_length = 16\nlimit = 5\n"
    )
    out = tmp_path / "c"
    args = ["build", "--config", str(toml), "--out", str(out), "--hsk", "1l_3t_0.5h", "--quiet"]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    selection = open_cache(out).manifest["selection"]
    assert selection["name"] == "1l_3t_0.5h" and selection["length"] == "left"


def test_eval_split_with_a_table_file_is_refused(tmp_path, sst2_dir, tiny_bert):
    """A table file is one split: --split there would be silently ignored, so it is an error."""
    from hsktrain.cli import app as train_app

    table = sst2_dir / "dev.tsv"
    args = ["eval", str(tiny_bert), "--data", str(table), "--split", "test"]
    r = runner.invoke(train_app, args)
    assert r.exit_code == 1
    assert r.output.strip() == (
        f"error: --split test: {table} is a table file, one split already; drop --split"
    )


def test_every_option_help_is_shown_whole():
    """Rich reads `[word]` in a help text as markup and drops it: every option's help must
    come out of --help as written (whitespace aside)."""
    import typer.main

    from hsktrain.cli import app as train_app

    for app_ in (app, train_app):
        group = typer.main.get_command(app_)
        for name, command in group.commands.items():
            shown = " ".join(wide_help(app_, name).replace("│", " ").split())  # the panel's edges
            for param in command.params:
                text = " ".join((getattr(param, "help", None) or "").split())
                assert text in shown, f"{name} --{param.name}: help shown without some of {text!r}"
