"""`streamav keys`: make the CURVE key pairs of a server and of the clients it allows.

A thin typer command; the work is in streamav/wire/keys.py (imported when it runs).
"""

from __future__ import annotations

from pathlib import Path

import typer


def keys(
    folder: Path = typer.Option(Path("keys"), "--dir", help="Folder of the keys (made, mode 0700)."),
    client: list[str] = typer.Option(
        [], help="Make a key pair for this client and put its public key on the allow-list "
                 "(repeatable)."),
    server: bool = typer.Option(True, "--server/--no-server",
                                help="Make the server's key pair if it is not there (default)."),
) -> None:
    """Make CURVE keys: the server's pair (kept if it exists) and one pair per --client, whose
    public key goes into DIR/clients/, the allow-list `live` reads. Secret files are 0600."""
    from streamav.errors import InputError
    from streamav.wire.keys import SERVER_NAME, make_keys

    if not server and not client:
        raise InputError("nothing to make: give --client NAME, or leave out --no-server")
    made = make_keys(folder, client, server=server)
    server_public = folder / f"{SERVER_NAME}.key"
    for files in made:
        if files.name == SERVER_NAME:
            state = "made" if files.created else "kept (it exists)"
            typer.echo(f"server key pair {state}: {files.secret} (secret, 0600; streamav live "
                       f"--curve-secret-key {files.secret}) and {files.public} (public: give it "
                       "to every client)")
        else:
            typer.echo(f"client {files.name}: allowed by {files.public}; give {files.secret} "
                       f"(secret, 0600) and {server_public} to {files.name} only (streamav "
                       f"subscribe --server-key server.key --client-key {files.secret.name}), "
                       "then delete it here")
