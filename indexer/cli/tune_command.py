"""``instructor-index tune``: fine-tune a model on labelled data (a client of
:func:`instructor_search.training.tune`)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from .common import errors_as_messages, print_json

#: Exit status after Ctrl+C (128 + SIGINT), with the checkpoint saved.
EXIT_INTERRUPTED = 130


@click.command()
@click.argument("data", type=click.Path(path_type=Path, exists=True))
@click.option(
    "--out",
    "out",
    required=True,
    type=click.Path(path_type=Path),
    help="Folder to write the tuned model to (a sentence-transformers folder).",
)
@click.option("--model", default=None, help="Base model: hub id, folder, or the bundled default.")
@click.option(
    "--index",
    "index_path",
    default=None,
    type=click.Path(path_type=Path, exists=True, file_okay=False),
    help="An index: its model and instruction pair are the base's, hard negatives are mined "
    "from it, and it is the corpus of a BEIR folder without corpus.jsonl.",
)
@click.option("--epochs", default=1, show_default=True, help="Passes over the training pairs.")
@click.option("--batch-size", default=32, show_default=True, help="Queries per step.")
@click.option("--learning-rate", default=2e-5, show_default=True, help="AdamW learning rate.")
@click.option("--temperature", default=0.1, show_default=True, help="Contrastive loss temperature.")
@click.option(
    "--warmup-ratio", default=0.1, show_default=True, help="Share of steps warming up the rate."
)
@click.option(
    "--max-steps", default=None, type=int, help="Train this many steps (overrides --epochs)."
)
@click.option(
    "--hard-negatives",
    default=1,
    show_default=True,
    help="Hard negatives mined per query (BEIR data; 0 = in-batch negatives only).",
)
@click.option(
    "--query-instruction",
    default=None,
    help="Instruction paired with queries (default: the index's, else INSTRUCTOR's).",
)
@click.option(
    "--document-instruction",
    default=None,
    help="Instruction paired with documents (default: the index's, else INSTRUCTOR's).",
)
@click.option(
    "--train-split", default="train", show_default=True, help="Trains on qrels/SPLIT.tsv."
)
@click.option(
    "--eval-split",
    default=None,
    help="Held-out queries: a split (test = qrels/test.tsv), a .tsv file, or a share of the "
    "training queries (0.2). Default: qrels/dev.tsv when it exists.",
)
@click.option("--seed", default=42, show_default=True, help="Seeds the batches and dropout.")
@click.option(
    "--max-seq-length", default=256, show_default=True, help="Most tokens per training input."
)
@click.option(
    "--checkpoint-every", default=100, show_default=True, help="Steps between checkpoints."
)
@click.option("--resume", is_flag=True, help="Continue from the checkpoint of a stopped run.")
@click.option("--overwrite", is_flag=True, help="Replace --out if it exists (at the very end).")
@click.option("--no-eval", is_flag=True, help="Skip the before/after evaluation.")
@click.option(
    "--work-dir",
    default=None,
    type=click.Path(path_type=Path),
    help="Checkpoints and evaluation indexes (default: OUT.tune; removed on success).",
)
@click.option(
    "--keep-work", is_flag=True, help="Keep the work folder's evaluation indexes after success."
)
@click.option("--device", default=None, help="cpu, cuda, ... (default: cuda when torch sees one).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@errors_as_messages
def tune(
    data: Path,
    out: Path,
    model: str | None,
    index_path: Path | None,
    no_eval: bool,
    work_dir: Path | None,
    as_json: bool,
    **options: Any,
) -> None:
    """Fine-tune a model on your labelled data with INSTRUCTOR's contrastive recipe.

    DATA is a BEIR folder (corpus.jsonl, queries.jsonl, qrels/train.tsv) or a MEDI-format
    .json/.jsonl file (records with query, pos, neg as [instruction, text], and task_id).
    Base and tuned model are scored on the held-out queries (nDCG@10, Recall@100; dense and
    hybrid) before the model is written to OUT.

    \b
    Example:
        instructor-index tune ./scifact --out ./scifact-model --eval-split test --epochs 2
        instructor-index tune sample_corpus/eval --index sample-index --out sample-model \\
            --train-split test --eval-split 0.3
        instructor-index build ./docs --index ./docs-index --model ./scifact-model
    """
    from instructor_search.training import TuneSettings
    from instructor_search.training import tune as run_tune

    settings = TuneSettings(
        model=model,
        index=str(index_path) if index_path else None,
        evaluate=not no_eval,
        work_dir=str(work_dir) if work_dir else None,
        **options,
    )
    try:
        report = run_tune(data, out, settings, show_progress=not as_json)
    except KeyboardInterrupt:
        from instructor_search.training.trainer import CHECKPOINT_FILE
        from instructor_search.training.tune import work_folder

        checkpoint = work_folder(out, settings) / CHECKPOINT_FILE
        if checkpoint.is_file():
            message = (
                f"Interrupted: the checkpoint is {checkpoint}; run the same command with "
                "--resume to continue."
            )
        else:
            message = f"Interrupted before the first checkpoint; nothing was written to {out}."
        click.secho(message, fg="yellow", err=True)
        sys.exit(EXIT_INTERRUPTED)
    if as_json:
        print_json(report.to_dict())
        return
    click.echo(
        f"{report.out}: {report.steps} steps over {report.examples} examples in "
        f"{report.training_seconds:.0f} s, loss {report.first_loss:.4f} -> {report.last_loss:.4f}"
    )
    evaluation = report.evaluation
    if evaluation is None:
        click.echo("Not evaluated: no held-out queries (pass --eval-split, or add qrels/dev.tsv).")
        return
    click.echo(f"Held-out queries: {evaluation['queries']} ({evaluation['held_out']})")
    click.echo(f"  {'':<8} {'nDCG@10 base':>13} {'tuned':>7} {'Recall@100 base':>16} {'tuned':>7}")
    for mode in ("dense", "hybrid"):
        base, tuned = evaluation["base"][mode], evaluation["tuned"][mode]
        click.echo(
            f"  {mode:<8} {base['ndcg_at_10']:>13.4f} {tuned['ndcg_at_10']:>7.4f} "
            f"{base['recall_at_100']:>16.4f} {tuned['recall_at_100']:>7.4f}"
        )
    worse = [mode for mode, better in evaluation["improved"].items() if not better]
    if worse:
        click.secho(
            f"The tuned model is NOT better than its base (equal or worse {', '.join(worse)} "
            "nDCG@10); "
            "it was written anyway: compare before you use it.",
            fg="yellow",
        )
    else:
        click.echo("The tuned model beats its base in every mode.")
