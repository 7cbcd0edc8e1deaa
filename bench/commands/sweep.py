"""``bench sweep``: a method's config fields over lists of values, as variants in one run directory,
then the report with the sweep table and plots (the supplement's Tab. 2)."""
from __future__ import annotations

import click

from bench.commands.run import EPILOG, run_options


@click.command(epilog=EPILOG)
@click.option("--method", help="The method whose fields --param names without a METHOD. prefix (e.g. ours).")
@click.option("--param", "params", multiple=True, metavar="[METHOD.]FIELD=V1,V2,...",
              help="A field and its values, e.g. eps_s=0.999,0.99,0.98,0.95,0.9; two --param of a method = a grid.")
@click.option("--reference", metavar="paper|FILE",
              help="Reference rows shown beside the swept values in the report (`paper`: the MeshInversion paper).")
@run_options
@click.pass_context
def sweep(ctx, method, params, reference, **options):
    """Run every value (combination) of the --param fields as a variant of its method in one run directory;
    rerun the same command to resume. Writes RUN/report/sweep.csv, sweep.md and sweep.png (RUN defaults to
    results/<dataset>-<profile>-sweep-<fields>)."""
    from bench.commands.run import execute
    from bench.config import parse_sets
    from bench.errors import UserError
    from bench.reporting import ReportOptions, build_report, print_report
    from bench.reporting.reference import load_reference
    from bench.run_config import merge_sets
    from bench.studies.sweep import describe, expand, parse_param

    if not params:
        raise UserError("--param is required, e.g. --method ours --param eps_s=0.999,0.99,0.98,0.95,0.9")
    if method is not None:
        from bench import registry

        registry.get("methods", method)
    if reference is not None:
        load_reference(reference)  # a bad file is refused before any work
    base = merge_sets((ctx.meta.get("run_config") or {}).get("sets", {}), parse_sets(options["sets"]))
    parsed = [parse_param(p, method, options["profile"], base) for p in params]
    variants = expand(parsed)
    if options["out"] is None:  # its own folder, not the one `bench run` defaults to
        fields = "-".join(dict.fromkeys(p.field for p in parsed))
        options["out"] = f"results/{options['dataset']}-{options['profile']}-sweep-{fields}"
    out = execute(ctx, list(variants), variant_overrides=variants, sweep=describe(parsed, variants), **options)
    from bench import launch

    if options["shard"] is not None or launch.env_shard() is not None:
        return  # one shard of many: the report waits for the whole run (`bench report RUN`)
    print_report(build_report([out], None, ReportOptions(reference=reference)))
