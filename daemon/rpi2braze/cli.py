"""The `rpi2braze` command. The interface contract (DESIGN.md) fixes its subcommands and options."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import sys
import threading
import time

from rpi2braze import __version__, tuning
from rpi2braze.errors import ConfigError, Rpi2BrazeError

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    config_option = argparse.ArgumentParser(add_help=False)
    config_option.add_argument("-c", "--config", default=argparse.SUPPRESS,
                               help="config file (default: $RPI2BRAZE_CONFIG, then /etc/rpi2braze/config.yaml)")
    parser = argparse.ArgumentParser(prog="rpi2braze", parents=[config_option],
                                     description="Deliver Redpoint RPI Outbound Delivery exports to Braze.")
    parser.add_argument("--version", action="version", version=f"rpi2braze {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("run", parents=[config_option], help="run the daemon (SIGTERM/SIGINT: drain and exit 0)")
    process = commands.add_parser("process", parents=[config_option], help="deliver these workflow folders now and exit")
    process.add_argument("folders", nargs="+", metavar="FOLDER", help="<base>/<Channel>/<Offer>/<Workflow ID>")
    process.add_argument("--force", action="store_true",
                         help="also send a workflow delivered before (from this folder or, archived, from another)")
    check = commands.add_parser("check-config", parents=[config_option], help="validate the config and report every problem")
    check.add_argument("--print-schema", action="store_true", help="print a JSON Schema of the config and exit")
    status = commands.add_parser("status", parents=[config_option], help="workflows recorded in the state file")
    status.add_argument("--json", action="store_true", help="a JSON array, one object per workflow")
    status.add_argument("--all", action="store_true", help="include delivered workflows in the table")
    retry = commands.add_parser("retry", parents=[config_option], help="re-queue a failed or quarantined workflow")
    retry.add_argument("workflow_id")
    retry.add_argument("--force", action="store_true", help="also re-send a workflow that was delivered")
    retry.add_argument("--source", help="the source of the workflow, when several share its ID")
    retry.add_argument("--channel", help="the channel of the workflow, when several share its ID")
    forget = commands.add_parser("forget", parents=[config_option],
                                 help="drop a workflow that will not be delivered (its folder is gone) from the state file")
    forget.add_argument("workflow_id")
    forget.add_argument("--source", help="the source of the workflow, when several share its ID")
    forget.add_argument("--channel", help="the channel of the workflow, when several share its ID")
    resend = commands.add_parser("resend", parents=[config_option],
                                 help="deliver the rows of a dead-letter file, fixed by hand, and exit")
    resend.add_argument("file", metavar="FILE", help="a dead-letter CSV that `status` names, under its own name")
    sandbox = commands.add_parser("sandbox", help="a local Braze stand-in for demos and tests (profiles in memory only)")
    sandbox.add_argument("--host", default="127.0.0.1")
    sandbox.add_argument("--port", type=int, default=4010)
    sandbox.add_argument("--api-key", default="sandbox-key")
    return parser


def main(argv: list[str] | None = None) -> int:
    arguments = build_parser().parse_args(argv)
    from rpi2braze import log
    log.configure("warning", "console", sys.stderr)
    handler = COMMANDS[arguments.command]
    try:
        return handler(arguments)
    except ConfigError as error:
        print(f"rpi2braze: {error}", file=sys.stderr)
        return EXIT_CONFIG
    except BrokenPipeError:   # `status | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())   # nothing left to flush at exit
        return EXIT_FAILED
    except (Rpi2BrazeError, OSError) as error:
        print(f"rpi2braze: {error}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_FAILED


def _settings(arguments: argparse.Namespace):
    from rpi2braze.config import load_settings, resolve_config_path
    return load_settings(resolve_config_path(getattr(arguments, "config", None)))


def _configure_logging(settings, interactive: bool = False) -> None:
    from rpi2braze import log
    if interactive:
        log.configure(settings.log_level, "console" if sys.stderr.isatty() else settings.log_format, sys.stderr)
    else:
        log.configure(settings.log_level, settings.log_format)


def command_run(arguments: argparse.Namespace) -> int:
    # A SIGHUP while the config loads would kill the process (the default action): remember it,
    # and the daemon reloads once it runs.
    reload_requested = threading.Event()
    signal.signal(signal.SIGHUP, lambda signum, frame: reload_requested.set())
    from rpi2braze.config import resolve_config_path
    from rpi2braze.daemon import Daemon
    settings = _settings(arguments)
    _configure_logging(settings)
    tuning.tune_garbage_collector()
    return Daemon(settings, resolve_config_path(getattr(arguments, "config", None)),
                  reload_requested=reload_requested).run()


def command_process(arguments: argparse.Namespace) -> int:
    from rpi2braze.process import process_folders
    settings = _settings(arguments)
    _configure_logging(settings, interactive=True)
    tuning.tune_garbage_collector()
    return process_folders(settings, arguments.folders, force=arguments.force)


def command_resend(arguments: argparse.Namespace) -> int:
    from rpi2braze.resend import resend_file
    settings = _settings(arguments)
    _configure_logging(settings, interactive=True)
    tuning.tune_garbage_collector()
    return resend_file(settings, arguments.file)


def command_check_config(arguments: argparse.Namespace) -> int:
    from rpi2braze.config import json_schema
    if arguments.print_schema:
        print(json.dumps(json_schema(), indent=2))
        return EXIT_OK
    settings = _settings(arguments)
    print(f"config OK: {len(settings.sources)} source(s) ({', '.join(s.name for s in settings.sources)}), "
          f"channels: {', '.join(f'{name} ({mode})' for name, mode in settings.channels.items())}, "
          f"state: {settings.state.path}")
    for index, source in enumerate(settings.sources):   # a share may be mounted later: a note, not a problem
        if source.type in ("local", "poll") and not os.path.isdir(source.path):
            print(f"note: sources[{index}].path: {source.path} is not a folder (yet?); "
                  "the daemon reports the source down and keeps trying")
    return EXIT_OK


def _existing_state(arguments: argparse.Namespace):
    """The state settings and the state file, opened for an operator command; a missing file is
    an error, never created.
    Only the config's `state:` section is read: the service's secrets need not be at hand."""
    from rpi2braze.config import load_state_settings, resolve_config_path
    from rpi2braze.errors import StateError
    from rpi2braze.state import StateStore
    settings = load_state_settings(resolve_config_path(getattr(arguments, "config", None)))
    if not os.path.exists(settings.path):
        raise StateError(f"no state file at {settings.path} (has the daemon run with this config? "
                         "Under systemd it is $STATE_DIRECTORY/state.db)")
    return settings, StateStore(settings.path)


def command_status(arguments: argparse.Namespace) -> int:
    from rpi2braze.deadletter import workflow_deadletter_path
    from rpi2braze.locks import held_elsewhere
    from rpi2braze.model import WorkflowStatus
    from rpi2braze.state import FINAL_STATUSES
    settings, store = _existing_state(arguments)
    try:
        records = store.records()
    finally:
        store.close()
    # key -> whether a process holds it; None where the lock file cannot be read (unknown)
    delivering = {record.key: held_elsewhere(settings.directory, record.key) for record in records
                  if record.status not in FINAL_STATUSES}
    if arguments.json:
        print(json.dumps([record.as_json() | {"being_delivered": delivering.get(record.key, False)}
                          for record in records], indent=2))
        return EXIT_OK
    # delivered workflows with rejected rows need a look too: their rows are in a dead-letter file
    shown = records if arguments.all else [r for r in records if r.status != WorkflowStatus.DELIVERED
                                           or r.rows_rejected]
    counts = {str(status): sum(1 for r in records if r.status == status) for status in WorkflowStatus}
    print("  ".join(f"{name}: {count}" for name, count in counts.items()))
    for record in shown:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(record.updated_at))
        orphaned = record.status == WorkflowStatus.IN_PROGRESS and delivering.get(record.key) is False
        print(f"{record.status:<12} {when}  {record.key.source}: {record.key.relpath}  "
              f"delivered {record.rows_delivered}, rejected {record.rows_rejected}"
              + (f"\n{'':14}reason: {record.reason}" if record.reason else "")
              + (f"\n{'':14}{ORPHANED}" if orphaned else "")
              + (f"\n{'':14}rejected rows: {workflow_deadletter_path(settings.directory, record.key)}"
                 if record.rows_rejected else ""))
    return EXIT_OK


ORPHANED = ("no process is delivering it now: the one that was ended without finishing (killed?); "
            "the daemon resumes it (a configured source's), or the same `process` or `resend` run again, "
            "sending only what was not acknowledged")


def command_retry(arguments: argparse.Namespace) -> int:
    from rpi2braze.model import WorkflowStatus
    _, store = _existing_state(arguments)
    try:
        record = _chosen(arguments, store)
        if record is None:
            return EXIT_FAILED
        if record.status == WorkflowStatus.DELIVERED and not arguments.force:
            print(f"rpi2braze: {record.key.source}: {record.key.relpath} was delivered; "
                  "add --force to send it again", file=sys.stderr)
            return EXIT_FAILED
        if (unwatched := _not_watched(arguments, record)) is not None:
            print(unwatched, file=sys.stderr)
            return EXIT_FAILED
        if _moved_away(record.location):
            print(f"rpi2braze: {record.location} is not there; the daemon only looks there: move the folder "
                  "back first (a quarantined one may be in the source's quarantine_path, a delivered one in "
                  "its archive_path), then run this again", file=sys.stderr)
            return EXIT_FAILED
        requeued = store.requeue(record.key)
        print(f"re-queued {requeued.key.source}: {requeued.key.relpath} (was {record.status})")
    finally:
        store.close()
    return EXIT_OK


def command_forget(arguments: argparse.Namespace) -> int:
    import shutil
    from rpi2braze.locks import held_elsewhere
    from rpi2braze.model import WorkflowStatus
    from rpi2braze.settings import RESEND_SOURCE
    from rpi2braze.sources.base import safe_join
    settings, store = _existing_state(arguments)
    try:
        record = _chosen(arguments, store)
        if record is None:
            return EXIT_FAILED
        if record.status == WorkflowStatus.DELIVERED:
            print(f"rpi2braze: {record.key.source}: {record.key.relpath} was delivered; its record is what keeps "
                  "it from being sent again", file=sys.stderr)
            return EXIT_FAILED
        if held_elsewhere(settings.directory, record.key) is not False:
            print(f"rpi2braze: {record.key.source}: {record.key.relpath} is being delivered now (or its lock "
                  "cannot be read); stop that first", file=sys.stderr)
            return EXIT_FAILED
        store.forget(record.key)
        if record.key.source == RESEND_SOURCE:   # the copy resend delivered from: personal data, now unused
            shutil.rmtree(safe_join(os.path.join(settings.directory, RESEND_SOURCE), record.key.relpath),
                          ignore_errors=True)
            print(f"forgot {record.key.source}: {record.key.relpath} (was {record.status}) and its copy of the rows")
        else:
            print(f"forgot {record.key.source}: {record.key.relpath} (was {record.status}); if its folder "
                  f"appears at {record.location} again, it is delivered as a new one")
    finally:
        store.close()
    return EXIT_OK


def _chosen(arguments: argparse.Namespace, store):
    """The one record of `arguments.workflow_id` (and --source, --channel), or None after saying why not."""
    records = [record for record in store.find(arguments.workflow_id)
               if arguments.source in (None, record.key.source) and arguments.channel in (None, record.key.channel)]
    if len(records) == 1:
        return records[0]
    print(_not_one_workflow(arguments, records, store.path), file=sys.stderr)
    return None


def _not_one_workflow(arguments: argparse.Namespace, records: list, state_path: str) -> str:
    """Why retry or forget acts on nothing: no workflow of that ID (and source and channel), or several."""
    named = " ".join(f"--{option} {value!r}" for option in ("source", "channel")
                     if (value := getattr(arguments, option)) is not None)
    if not records:
        return f"rpi2braze: no workflow {arguments.workflow_id!r} {named + ' ' if named else ''}in {state_path}"
    listed = "".join(f"\n  --source {r.key.source!r} --channel {r.key.channel!r}: {r.key.relpath} ({r.status})"
                     for r in records)
    return (f"rpi2braze: {len(records)} workflows have ID {arguments.workflow_id!r}; "
            f"name one with --source and --channel:{listed}")


def _not_watched(arguments: argparse.Namespace, record) -> str | None:
    """Why requeuing `record` would deliver nothing, if its source is none the daemon scans: a
    resend, or a folder `process` delivered from outside every configured source."""
    from rpi2braze.config import configured_source_names, resolve_config_path
    from rpi2braze.settings import RESEND_SOURCE
    names = configured_source_names(resolve_config_path(getattr(arguments, "config", None)))
    if names is None or record.key.source in names:   # None: a name this shell cannot work out
        return None
    if record.key.source == RESEND_SOURCE:
        return (f"rpi2braze: {record.key.relpath} was resent by hand (source {RESEND_SOURCE!r}), which the "
                "daemon never looks at: run `rpi2braze resend FILE` again with its dead-letter file")
    return (f"rpi2braze: source {record.key.source!r} is not in the config, so the daemon never looks at "
            f"{record.location}: deliver it with `rpi2braze process --force {shlex.quote(record.location)}`")


def _moved_away(location: str) -> bool:
    """A folder on a local or mounted share that is not there (moved to quarantine_path or
    archive_path, or deleted): requeued, it would stay pending, the daemon looking in vain."""
    return os.path.isabs(location) and not os.path.isdir(location)


def command_sandbox(arguments: argparse.Namespace) -> int:
    from rpi2braze.sandbox.server import serve
    return serve(arguments.host, arguments.port, arguments.api_key)


COMMANDS = {
    "run": command_run,
    "process": command_process,
    "check-config": command_check_config,
    "status": command_status,
    "retry": command_retry,
    "resend": command_resend,
    "forget": command_forget,
    "sandbox": command_sandbox,
}
