"""Generated from protos/authswitch/v1 by tools/gen_protos.py; do not edit."""
