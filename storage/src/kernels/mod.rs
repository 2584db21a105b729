//! Block kernels shared by the linear-algebra and relational operators.
