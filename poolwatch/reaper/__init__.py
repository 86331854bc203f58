"""The reaper: the only part of poolwatch that terminates server sessions, and only within a policy.

``policy`` decides (pure), ``postgres``, ``mysql`` and ``redis`` terminate with a re-check at kill time,
``audit`` records every decision, ``lease`` lets one replica act on a target at a time, and ``job``
ties them into a scheduler job.
"""
