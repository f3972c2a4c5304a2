"""The Optuna storages of tuned sweeps: checking a storage URL before anything runs, opening one for
``largebatch sweep --tune`` (an RDB storage: a SQLite file by default, PostgreSQL or MySQL to share a
study between machines; Optuna's journal storage is not used), the finished trials of a study, the
trials interrupted by SIGTERM queued again, and trials run against a copy of a storage merged back.

Studies and trials written by earlier versions are read as they are: nothing here changes a
storage's layout (study names, user attributes, parameters).
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from pathlib import Path

DRIVER_PACKAGES = {
    "MySQLdb": "mysqlclient",
    "pymysql": "PyMySQL",
    "psycopg2": "psycopg2-binary",
    "psycopg": "psycopg[binary]",
    "pg8000": "pg8000",
    "asyncpg": "asyncpg",
    "mysql": "mysql-connector-python",
}
"""The pip package of each database driver module SQLAlchemy may ask for (a storage URL's driver)."""

OPTUNA_TABLES = ("studies", "version_info")
"""Tables every Optuna RDB storage has: a SQLite file without them is another program's database."""

HEARTBEAT_S = 30
"""How often a running trial marks itself alive in the storage (seconds)."""
GRACE_S = 120
"""A running trial without a heartbeat for this long is failed and retried (its process died)."""
MAX_RETRY = 3
"""Retries of a trial whose process died (``optuna.storages.RetryFailedTrialCallback``)."""


def shown_url(url: str) -> str:
    """``url`` for a message: its password, if any, replaced by ``***``."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


def first_line(err: BaseException) -> str:
    """An exception's first line, without SQLAlchemy's '(Background on this error ...)' link."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"{type(err).__name__}: {text}"[:300]


EXAMPLES = "sqlite:///PATH/study.db, postgresql://USER:PASSWORD@HOST/DB or mysql+pymysql://USER:PASSWORD@HOST/DB"


def storage_problem(url: str, *, existing: bool) -> str | None:
    """Why ``url`` cannot be used as an Optuna storage, as one line naming it and the fix, or None.

    Checked without changing anything (a SQLite file is opened read-only, no table is created): the
    URL parses, SQLAlchemy knows its database, the database's driver module is installed, and a
    SQLite file is a database holding an Optuna study's tables (or no tables at all). ``existing``:
    the storage must already hold studies (``study-report``); otherwise a missing or empty SQLite file
    is fine (``sweep --tune`` creates the study there). A server is not contacted.
    """
    from sqlalchemy.engine import make_url

    name = shown_url(url)
    try:
        parsed = make_url(url)
    except Exception:
        return f"storage {name!r} is not a database URL; give {EXAMPLES}"
    try:
        dialect = parsed.get_dialect()
    except Exception:
        return f"storage {name}: unknown database {parsed.drivername!r} (no SQLAlchemy dialect); give {EXAMPLES}"
    try:
        (getattr(dialect, "import_dbapi", None) or dialect.dbapi)()
    except ImportError as err:
        module = getattr(err, "name", None) or str(err).split("'")[1 if "'" in str(err) else 0]
        package = DRIVER_PACKAGES.get(module, module)
        return (
            f"storage {name}: its database driver {module!r} is not installed; pip install {package!r}, "
            f"or name an installed driver in the URL (e.g. {parsed.get_backend_name()}+DRIVER://...)"
        )
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return _sqlite_problem(name, Path(parsed.database), existing=existing)


def _sqlite_problem(name: str, path: Path, *, existing: bool) -> str | None:
    """:func:`storage_problem` of a SQLite file ``path`` (``name``: its URL for the message)."""
    if path.is_dir():
        return f"storage {name}: {path} is a folder; give sqlite:///PATH of a study.db file"
    if not path.exists():
        if existing:
            return f"storage {name}: no such file (give sqlite:///PATH of an existing study.db)"
        ancestor = path.absolute().parent
        while not ancestor.exists() and ancestor != ancestor.parent:
            ancestor = ancestor.parent
        if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
            why = "is not a folder" if not ancestor.is_dir() else "is not writable"
            return f"storage {name}: the study.db cannot be created there ({ancestor} {why}); give another path"
        return None
    try:
        connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        finally:
            connection.close()
    except sqlite3.Error as err:
        return (
            f"storage {name}: {path} is not a readable SQLite database ({err}); give the study.db of "
            f"`largebatch sweep --tune`, or a new path for a new study (the file was not changed)"
        )
    if tables and not all(t in tables for t in OPTUNA_TABLES):
        listed = ", ".join(sorted(tables)[:5]) + (" ..." if len(tables) > 5 else "")
        return (
            f"storage {name}: {path} is a SQLite database of another program (tables {listed}), not an Optuna "
            f"study; give the study.db of `largebatch sweep --tune`, or a new path (the file was not changed)"
        )
    if existing and not tables:
        return f"storage {name}: {path} holds no Optuna study (an empty database); give the study.db of a tuned sweep"
    return None


def retry_callback():
    """Optuna's callback class that retries a trial whose heartbeat stopped (Optuna 4.9 renamed it;
    older 4.x releases have only the first name)."""
    import optuna

    return (
        getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None) or optuna.storages.RetryFailedTrialCallback
    )


def open_storage(url: str, out: Path):
    """The RDB storage at ``url`` for a tuned sweep into ``out`` (made, and a SQLite file's folder),
    with a heartbeat: a trial whose process died is failed after :data:`GRACE_S` and retried with its
    parameters (up to :data:`MAX_RETRY` times). A SQLite file waits up to 60 s for a lock.

    Raises:
        Exception: what SQLAlchemy or Optuna raise for a server that refuses, an old Optuna schema, or
            a folder that cannot be made.
    """
    import optuna

    out.mkdir(parents=True, exist_ok=True)
    kwargs = {}
    if url.startswith("sqlite"):
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}
        if url.startswith("sqlite:///"):  # the file's folder, as OUT is made
            Path(url[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.RDBStorage(
        url,
        heartbeat_interval=HEARTBEAT_S,
        grace_period=GRACE_S,
        failed_trial_callback=retry_callback()(max_retry=MAX_RETRY),
        **kwargs,
    )


def load_study_or_none(name: str, storage):
    """The study ``name`` in ``storage``, or None when the storage has no such study."""
    import optuna

    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        return None


def finished_trials(study) -> list:
    """The study's complete and pruned trials (a failed or running one is not a result)."""
    import optuna

    return [
        t
        for t in study.get_trials(deepcopy=False)
        if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    ]


def requeue_interrupted(study) -> list[int]:
    """Queue again every run whose latest trial was interrupted by SIGTERM or Ctrl-C (state FAIL,
    marked ``interrupted``): same parameters, same run directory, resumed from its newest checkpoint.
    A run interrupted again on its retry is queued again. One killed outright is retried by the
    heartbeat instead. Returns the run numbers queued."""
    import optuna

    latest = {}
    for t in study.get_trials(deepcopy=False):  # in trial order: the last one seen per run is its latest
        run = t.user_attrs.get("run_number", t.user_attrs.get("resume_run_number", t.number))
        latest[run] = t
    queued = []
    for run, t in latest.items():
        if t.state == optuna.trial.TrialState.FAIL and t.user_attrs.get("interrupted"):
            study.enqueue_trial(t.params, user_attrs={"resume_run_number": run})
            queued.append(run)
    return queued


def merge_trials(
    source, target, *, since=None, attrs: dict | None = None, attrs_of: Callable | None = None
) -> list[tuple[str, int, int]]:
    """Add the finished trials of every study in storage ``source`` to the study of the same name in
    storage ``target`` (created with the source's direction and ``protocol`` when missing): how
    trials run on a machine that cannot reach the study's storage, against a copy of it, come back.

    Only trials that began at or after ``since`` (a naive UTC ``datetime``; None: all) and finished
    (complete or pruned) are added, each with ``attrs`` added to its user attributes and
    ``merged_from`` naming its source study and number, so merging the same source twice adds
    nothing the second time. Running or failed trials (a trial stopped by SIGTERM) are left out.

    Args:
        source, target: Optuna storages or storage URLs.
        attrs_of: called as ``attrs_of(study_name, source_trial, number_in_target)`` before a trial
            is added; the user attributes it returns are added too (a finished trial's attributes
            cannot change afterwards).

    Returns:
        ``(study name, number in the source, number in the target)`` for each trial added.
    """
    import optuna

    added = []
    for summary in optuna.get_all_study_summaries(source, include_best_trial=False):
        name = summary.study_name
        src = optuna.load_study(study_name=name, storage=source)
        todo = [
            t
            for t in finished_trials(src)
            if since is None or (t.datetime_start is not None and t.datetime_start >= since)
        ]
        if not todo:
            continue
        dst = optuna.create_study(study_name=name, storage=target, direction=src.direction, load_if_exists=True)
        if "protocol" in src.user_attrs and "protocol" not in dst.user_attrs:
            dst.set_user_attr("protocol", src.user_attrs["protocol"])
        added += _add_trials(dst, name, todo, {**(attrs or {})}, attrs_of)
    return added


def _add_trials(dst, name: str, todo: list, attrs: dict, attrs_of: Callable | None) -> list[tuple[str, int, int]]:
    """Add ``todo`` (finished trials of study ``name`` elsewhere) to study ``dst``, skipping those it
    already holds (``merged_from``); see :func:`merge_trials`."""
    import optuna

    existing = dst.get_trials(deepcopy=False)
    seen = {t.user_attrs.get("merged_from") for t in existing}
    number = len(existing)  # the next trial's number in the target
    added = []
    for t in todo:
        origin = f"{name}#{t.number}@{t.datetime_start.isoformat()}"
        if origin in seen:
            continue
        dst.add_trial(
            optuna.trial.create_trial(
                state=t.state,
                value=t.value if t.state == optuna.trial.TrialState.COMPLETE else None,
                params=t.params,
                distributions=t.distributions,
                user_attrs={
                    **t.user_attrs,
                    **attrs,
                    **(attrs_of(name, t, number) if attrs_of else {}),
                    "merged_from": origin,
                },
                intermediate_values=t.intermediate_values,
            )
        )
        added.append((name, t.number, number))
        number += 1
    return added
