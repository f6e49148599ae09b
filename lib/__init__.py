"""facet: train, serve and monitor a 40-attribute CelebA Vision Transformer.

All logic lives here; the flows only read artifacts, call this package and store artifacts.
"""

# Tells Metaflow to ship this package inside the code package of remote steps
# (--with kubernetes / --with batch), so `import lib` works on the pod.
METAFLOW_PACKAGE_POLICY = "include"
