"""gpmargin: the Gaussian-process model of normalized margin and generalization.

Farhang, Bernstein, Tirumala, Liu & Yue, *Investigating Generalization by
Controlling Normalized Margin* (ICML 2022), as a toolkit.

Subpackages
-----------
gpmargin.data      real datasets (MNIST, Fashion-MNIST, CIFAR-10, digits) and the paper's tasks
gpmargin.kernels   NNGP / NTK kernels as composable layers (stax-style), PyTorch, float64
gpmargin.predict   GP posteriors conditioned on f(train) = alpha * y and predicted test-accuracy curves
gpmargin.measures  margins and norm-based complexity measures of trained networks
"""

__version__ = "0.1.0"
