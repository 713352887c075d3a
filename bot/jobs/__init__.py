"""The job machinery: everything between a queued job and its delivered (or refunded) end.

- `engine`: drives each job from `queued` to `succeeded` or `failed`, and resumes them;
- `dispatcher` and `fair_queue`: the provider's slots, handed out round-robin across users;
- `rehost`: copies outputs into our own store before the provider's links expire;
- `events` and `event_bus`: what happens to a job, told to whoever follows it.
"""
