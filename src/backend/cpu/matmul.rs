//! A safe, bounds-checked front to the `gemm` crate for strided f32 matrices.

use gemm::Parallelism;

/// Where a matrix's elements lie in its slice: element (r, c) is at `offset + r·row_stride + c·col_stride`.
#[derive(Clone, Copy, Debug)]
pub struct MatLayout {
    /// Index of element (0, 0) in the slice.
    pub offset: usize,
    /// Number of rows.
    pub rows: usize,
    /// Number of columns.
    pub cols: usize,
    /// Elements between (r, c) and (r + 1, c).
    pub row_stride: usize,
    /// Elements between (r, c) and (r, c + 1); 1 for row-major.
    pub col_stride: usize,
}

impl MatLayout {
    /// A dense row-major `[rows, cols]` matrix at the start of its slice.
    pub fn row_major(rows: usize, cols: usize) -> Self {
        MatLayout {
            offset: 0,
            rows,
            cols,
            row_stride: cols,
            col_stride: 1,
        }
    }

    /// The same elements read as the transpose.
    pub fn t(self) -> Self {
        MatLayout {
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
            ..self
        }
    }

    /// This layout shifted `offset` elements further into the slice.
    pub fn at(self, offset: usize) -> Self {
        MatLayout { offset, ..self }
    }

    fn last_index(&self) -> usize {
        self.offset + (self.rows - 1) * self.row_stride + (self.cols - 1) * self.col_stride
    }
}

/// Whether a product runs on the rayon pool or on the calling thread (inside an already parallel loop).
#[derive(Clone, Copy, Debug)]
pub enum Threads {
    /// Split the product over the current rayon pool.
    Pool,
    /// Run on the calling thread only; use inside `par_iter` bodies to avoid nested parallelism.
    Caller,
}

/// `c = a·b`, or `c += a·b` with `accumulate`; each operand is its values and their layout.
pub fn matmul(
    c: &mut [f32],
    cl: MatLayout,
    (a, al): (&[f32], MatLayout),
    (b, bl): (&[f32], MatLayout),
    accumulate: bool,
    threads: Threads,
) {
    assert_eq!(al.rows, cl.rows, "matmul: rows of a and c");
    assert_eq!(bl.cols, cl.cols, "matmul: cols of b and c");
    assert_eq!(al.cols, bl.rows, "matmul: inner dimensions");
    if cl.rows == 0 || cl.cols == 0 {
        return;
    }
    if al.cols == 0 {
        if !accumulate {
            for r in 0..cl.rows {
                for col in 0..cl.cols {
                    c[cl.offset + r * cl.row_stride + col * cl.col_stride] = 0.0;
                }
            }
        }
        return;
    }
    assert!(cl.last_index() < c.len(), "matmul: c out of bounds");
    assert!(al.last_index() < a.len(), "matmul: a out of bounds");
    assert!(bl.last_index() < b.len(), "matmul: b out of bounds");
    let parallelism = match threads {
        Threads::Pool => Parallelism::Rayon(rayon::current_num_threads()),
        Threads::Caller => Parallelism::None,
    };
    // SAFETY: every index the product touches was bounds-checked above, and `c` is borrowed
    // mutably while `a` and `b` are shared borrows, so they cannot overlap it.
    unsafe {
        gemm::gemm(
            cl.rows,
            cl.cols,
            al.cols,
            c.as_mut_ptr().add(cl.offset),
            cl.col_stride as isize,
            cl.row_stride as isize,
            accumulate,
            a.as_ptr().add(al.offset),
            al.col_stride as isize,
            al.row_stride as isize,
            b.as_ptr().add(bl.offset),
            bl.col_stride as isize,
            bl.row_stride as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}
