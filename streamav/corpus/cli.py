"""`streamav corpus synth | index | cache`: thin typer wrappers; the work is in the modules they
import when run (so `streamav --help` stays fast)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from streamav.errors import InputError

corpus_app = typer.Typer(help="Make, index and cache training corpora.", no_args_is_help=True)

FORMATS = ("mead", "crema-d", "ravdess", "grid", "folder", "synth")


@corpus_app.command()
def synth(
    out: Path = typer.Option(..., help="Output folder (created)."),
    speakers: int = typer.Option(4, help="Number of speakers (identities)."),
    sentences: int = typer.Option(4, help="Sentences per speaker, emotion and intensity."),
    seed: int = typer.Option(0, help="Seed: the same seed gives the same files."),
    emotions: Optional[str] = typer.Option(
        None, help="Comma-separated subset of the 8 MEAD emotions (default: all)."),
    intensities: Optional[str] = typer.Option(None, help="Comma-separated subset of 1,2,3."),
    workers: int = typer.Option(2, help="Worker processes."),
    contact_sheet: Optional[Path] = typer.Option(None, help="Also write a contact sheet PNG."),
) -> None:
    """Generate the synthetic audiovisual emotional-speech corpus with known factors."""
    from streamav.corpus.synth.generate import synthesize_corpus
    from streamav.outputs import check_writable_file, check_writable_folder

    try:
        levels = [int(i) for i in intensities.split(",")] if intensities else None
    except ValueError:
        raise InputError(f"--intensities {intensities!r}: expected integers like 1,3") from None
    check_writable_folder(out, "--out")
    if contact_sheet is not None:
        check_writable_file(contact_sheet, "--contact-sheet")
    synthesize_corpus(
        out, speakers=speakers, sentences=sentences, seed=seed,
        emotions=emotions.split(",") if emotions else None,
        intensities=levels, workers=workers, contact_sheet=contact_sheet)


@corpus_app.command()
def index(
    root: Path = typer.Argument(..., help="The corpus root folder."),
    format: str = typer.Option(..., "--format", help=f"One of: {', '.join(FORMATS)}."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the index as JSON."),
) -> None:
    """Read a corpus's own layout and naming scheme into one list of labelled clips."""
    from streamav.corpus.index import print_index, index_corpus, write_index_json
    from streamav.outputs import check_writable_file

    if json_out is not None:
        check_writable_file(json_out, "--json")
    result = index_corpus(root, format)
    print_index(result)
    if json_out is not None:
        write_index_json(result, json_out)


@corpus_app.command()
def cache(
    root: Path = typer.Argument(..., help="The corpus root folder."),
    format: str = typer.Option(..., "--format", help=f"One of: {', '.join(FORMATS)}."),
    out: Path = typer.Option(..., help="Cache folder (created; reused and resumed)."),
    workers: int = typer.Option(2, help="Worker processes."),
    split_seed: int = typer.Option(0, help="Seed of the speaker-disjoint split."),
) -> None:
    """Run the live front end over every clip once and store the features (resumable)."""
    from streamav.corpus.cache import build_cache
    from streamav.outputs import check_writable_folder

    check_writable_folder(out, "--out")
    build_cache(root, format, out, workers=workers, split_seed=split_seed)
