"""The `genlab` command: a thin typer front over the library. Each command group lives in its own file.

User errors (`GenlabError`) print one red line naming the problem and exit with code 2, no traceback.

    genlab --help
"""

from __future__ import annotations

import sys

import typer

from genlab.cli.console import console, fail
from genlab.errors import GenlabError

app = typer.Typer(
    name="genlab",
    help="genlab: the GenAI Handbook as one small, tested, CPU-first system. Train, tune, evaluate and serve small LMs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

from genlab.cli import align, chat, evaluate, generate, pretrain, rag, serve, sft, speedrun, tokenizer  # noqa: E402  (each module is light: heavy imports are lazy)

app.add_typer(tokenizer.app, name="tokenizer")
app.add_typer(rag.app, name="rag")
app.command("pretrain")(pretrain.pretrain)
app.command("generate")(generate.generate)
app.command("speedrun")(speedrun.speedrun)
app.command("finetune")(sft.sft)
app.command("sft", help="Alias of finetune.")(sft.sft)
app.command("eval")(evaluate.evaluate)
app.command("chat")(chat.chat)
for _name in ("dpo", "kto", "orpo", "simpo", "reward", "ppo", "grpo"):
    app.command(_name)(getattr(align, _name))
app.command("serve")(serve.serve)


def main() -> None:
    try:
        app()
    except GenlabError as e:
        fail(str(e))
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]")
        sys.exit(130)


if __name__ == "__main__":
    main()
