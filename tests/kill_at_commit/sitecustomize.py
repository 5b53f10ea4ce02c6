"""Test fixture, not part of edgepipe: with this folder first on PYTHONPATH, every Python process of a build (the
CLI, its spawned stage workers, toolchain children) imports this module at start-up. When $EDGEPIPE_TEST_KILL_AT
names a stage, the process about to commit that stage's cache entry SIGKILLs its whole process group: the build
dies as a power cut or an OOM kill would leave it, with the stage's temp work dir in the cache and nothing
committed. Start the build with start_new_session=True so that the group is the build's own."""
import os

_STAGE = os.environ.get("EDGEPIPE_TEST_KILL_AT")

if _STAGE:
    import signal

    from pipeline.cache import Cache

    _commit = Cache.commit

    def _commit_or_die(self, stage, key, workdir, art, replace=False):
        if stage == _STAGE:
            os.killpg(os.getpgrp(), signal.SIGKILL)
        return _commit(self, stage, key, workdir, art, replace=replace)

    Cache.commit = _commit_or_die
