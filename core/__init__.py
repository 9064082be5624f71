"""fcnseg's shared core, under every stage: errors, atomic writes, the output guard, shapes, model metadata,
the engine sidecar and class maps.

It needs numpy alone (``cli_args`` adds click, for the command lines), so the runtime wheel ships it beside
``fcnseg.runtime``. It imports nothing else of fcnseg.
"""
