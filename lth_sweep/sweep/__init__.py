"""The sweep layer: the sweep file schema, the launch spec, the Ray Tune trainable and Tuner, objectives,
W&B tracking and status read from storage. Imports the engine, never the report layer."""
