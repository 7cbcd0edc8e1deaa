"""The ``bench`` command line. Sub-commands load lazily, so ``bench --help`` imports no torch.

Every sub-command lives in its own module under :mod:`bench.commands`; user errors
(:class:`bench.errors.UserError`) and operating-system errors (disk full, read-only, a file in the way)
become one line on stderr and exit status 2.
"""
from __future__ import annotations

import importlib
import sys

import click

from bench.errors import UserError, os_error_message

COMMANDS = {
    "run": ("bench.commands.run:run", "Run methods on a dataset into a run directory (resumable, sharded)."),
    "report": ("bench.commands.report:report", "Comparison table, plots and protocol summary of runs."),
    "diff": ("bench.commands.diff:diff", "Differences of two runs: protocol, per-metric deltas with CIs, top changes."),
    "eval": ("bench.commands.eval:eval_cmd", "Corpus-level metrics (FID_1/10/12, KID, 3D) of a run."),
    "ls": ("bench.commands.ls:ls", "List registered methods, datasets and metrics."),
    "sample": ("bench.commands.sample:sample", "Sample meshes from the generator (.obj + texture + views)."),
    "data": ("bench.commands.data:data", "Dataset utilities (bench data check)."),
    "profile": ("bench.commands.profile:profile", "Timing of any method: per stage (ours) or per reconstruct call."),
    "repair": ("bench.commands.repair:repair", "Move damaged records/metric files aside, restore the manifest."),
    "config": ("bench.commands.config:config", "Every config field of a method or dataset (default, profile, help)."),
    "eval-generator": ("bench.commands.eval_generator:eval_generator",
                       "Full/Texture/Mesh FID of the generator itself (supplement Tab. 1, ConvMesh's protocol)."),
    "figure": ("bench.commands.figure:figure", "Qualitative figures of a run (bench figure ablation: Fig. 2's grid)."),
    "sweep": ("bench.commands.sweep:sweep", "Config fields of a method over values, as variants in one run (Tab. 2)."),
    "sensitivity": ("bench.commands.sensitivity:sensitivity",
                    "3D shape change vs 2D mask losses under latent jitter (supplement Fig. 1)."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return sorted(COMMANDS)

    def get_command(self, ctx, name):
        if name not in COMMANDS:
            return None
        module, _, attr = COMMANDS[name][0].partition(":")
        return getattr(importlib.import_module(module), attr)

    def format_commands(self, ctx, formatter):
        rows = [(name, COMMANDS[name][1]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def invoke(self, ctx):
        import logging

        logging.raiseExceptions = False  # a log write on a full disk must not print a traceback
        try:
            return super().invoke(ctx)
        except click.UsageError as err:  # a bad option value: one line too, with where to look
            where = f"bench {err.ctx.info_name} --help" if err.ctx is not None and err.ctx.info_name else "--help"
            click.echo(f"error: {err.format_message()} (see `{where}`)", err=True)
            sys.exit(UserError.exit_code)
        except UserError as err:
            click.echo(f"error: {err}", err=True)
            sys.exit(err.exit_code)
        except BrokenPipeError:  # `bench ... | head`: the reader has what it wanted
            import os

            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(0)
        except OSError as err:
            try:
                click.echo(f"error: {os_error_message(err)}", err=True)
            except OSError:  # pragma: no cover - stderr itself is gone
                pass
            sys.exit(UserError.exit_code)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="meshbench")
def main():
    """meshbench: evaluate single-view 3D reconstruction (MeshInversion, CMR-TTO, UMR-TTO)."""


if __name__ == "__main__":
    main()
