"""The job machinery: everything between a queued job and its delivered (or refunded) end.

- `engine`: drives each job from `queued` to `succeeded` or `failed` while it holds the job's
  lease, and takes over jobs whose process stopped or died;
- `dispatcher`: the provider's slots, counted and handed out in a fair line kept in the
  database (`storage.dispatch`), so the cap holds across every process;
- `rehost`: copies outputs into our own store before the provider's links expire;
- `events` and `event_bus`: what happens to a job, told to whoever follows it;
- `relay`: the same events, and webhook wake-ups, carried between processes.
"""
