"""The flow-matching image family: rectified-flow sampling with SDE and ODE steps."""
