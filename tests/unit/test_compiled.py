"""compiled/ is fresh, deterministic, and every compiled component is reusable in a new pipeline."""

from pathlib import Path

import pytest
from kfp import compiler, dsl
from kfp.components import load_component_from_file
from kftune.pipelines import cli
from kftune.pipelines import compile as compiling

# The checkout's compiled/ (kftune itself may be installed from its wheel, away from it).
COMPILED = Path(__file__).resolve().parents[2] / "compiled"


@pytest.fixture(scope="module")
def fresh() -> dict[str, bytes]:
    return compiling.compile_all()


def test_compiled_dir_is_fresh(fresh: dict[str, bytes]) -> None:
    stale = [
        relative
        for relative, content in fresh.items()
        if not (COMPILED / relative).is_file() or (COMPILED / relative).read_bytes() != content
    ]
    assert stale == [], f"stale compiled files {stale}: run `kftune compile`"


def test_compile_is_deterministic(fresh: dict[str, bytes]) -> None:
    assert compiling.compile_all() == fresh


def test_compile_check_names_the_stale_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["compile", "--output-dir", str(tmp_path / "compiled")]) == 0
    capsys.readouterr()
    target = tmp_path / "compiled" / "components" / "evaluate.yaml"
    target.write_text(target.read_text().replace("batch_size", "batch_sise"))
    assert cli.main(["compile", "--check", "--output-dir", str(tmp_path / "compiled")]) == 1
    err = capsys.readouterr().err
    assert f"compiled YAML is stale or missing: {target}\n" in err
    assert "run `kftune compile`" in err


def test_compile_check_passes_on_fresh_output(tmp_path: Path) -> None:
    assert cli.main(["compile", "--output-dir", str(tmp_path)]) == 0
    assert cli.main(["compile", "--check", "--output-dir", str(tmp_path)]) == 0
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.yaml")) == sorted(
        compiling.compile_targets()
    )


def test_compiled_components_wire_into_a_new_pipeline(tmp_path: Path) -> None:
    components = COMPILED / "components"
    download_dataset = load_component_from_file(str(components / "download_dataset.yaml"))
    download_model = load_component_from_file(str(components / "download_model.yaml"))
    train_lora = load_component_from_file(str(components / "train_lora.yaml"))
    evaluate = load_component_from_file(str(components / "evaluate.yaml"))

    @dsl.pipeline(name="reuse")
    def reuse(dataset: str, model: str):
        data = download_dataset(uri=dataset, split="train[:100]", eval_fraction=0.2)
        base = download_model(uri=model, task="causal-lm")
        adapter = train_lora(
            model=base.outputs["model"],
            train_data=data.outputs["train_data"],
            task="causal-lm",
            training_parameters={"max_steps": 1},
            backend="local",
        )
        evaluate(
            base_model=base.outputs["model"],
            adapter=adapter.outputs["adapter"],
            eval_data=data.outputs["eval_data"],
            task="causal-lm",
        )

    output = tmp_path / "reuse.yaml"
    compiler.Compiler().compile(reuse, str(output))
    text = output.read_text()
    for task in ("download-dataset", "download-model", "train-lora", "evaluate"):
        assert f"exec-{task}" in text


def test_compiled_pipeline_nests_in_another_pipeline(tmp_path: Path) -> None:
    finetune = load_component_from_file(str(COMPILED / compiling.PIPELINE_FILE))

    @dsl.pipeline(name="outer")
    def outer():
        finetune(split="train[:500]")

    compiler.Compiler().compile(outer, str(tmp_path / "outer.yaml"))
    assert "comp-lora-finetune" in (tmp_path / "outer.yaml").read_text()


def test_header_dict_defaults_are_printed_with_sorted_keys() -> None:
    # KFP prints dict defaults in protobuf map order, which differs between processes.
    header = (
        "# Inputs:\n"
        "#    lora_config: dict [Default: {'r': 8.0, 'lora_alpha': 16.0, 't': ['q', 'k']}]\n"
        "#    tolerations: list [Default: [{'value': 'a', 'key': 'b'}]]\n"
        "#    split: str [Default: 'train']\n"
    )
    assert compiling._stable_header(header) == (
        "# Inputs:\n"
        "#    lora_config: dict [Default: {'lora_alpha': 16.0, 'r': 8.0, 't': ['q', 'k']}]\n"
        "#    tolerations: list [Default: [{'key': 'b', 'value': 'a'}]]\n"
        "#    split: str [Default: 'train']\n"
    )
