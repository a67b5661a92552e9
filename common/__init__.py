"""What every package of the project needs that is not the model: user errors
(`errors`), config.toml and its overrides (`settings`), atomic files (`atomic`), which
device a setting names (`devices`), and where models come from without a hub (`offline`).

The layering: realtime -> engines <- trainer, and all three -> common, which imports none
of them.
"""
