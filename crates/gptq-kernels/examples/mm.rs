use rayon::prelude::*;
fn main() {
    let (m, k, n) = (2048, 576, 1536);
    let x = vec![0.5f32; m * k];
    let w = vec![0.25f32; n * k];
    let mut o = vec![0.0f32; m * n];
    for _ in 0..2 {
        gptq_kernels::cpu::matmul_nt(&x, &w, m, k, n, &mut o);
    }
    let t = std::time::Instant::now();
    let it = 10;
    for _ in 0..it {
        gptq_kernels::cpu::matmul_nt(&x, &w, m, k, n, &mut o);
    }
    let s = t.elapsed().as_secs_f64() / it as f64;
    println!(
        "threads {} gemm-rayon {:.1} GFLOP/s",
        rayon::current_num_threads(),
        2.0 * (m * k * n) as f64 / s / 1e9
    );
    // manual split of rows across rayon tasks, single-threaded gemm each
    let t = std::time::Instant::now();
    for _ in 0..it {
        let rows = m / 2;
        o.par_chunks_mut(rows * n)
            .zip(x.par_chunks(rows * k))
            .for_each(|(oc, xc)| {
                gptq_kernels::cpu::matmul_strided(
                    gptq_kernels::cpu::MatMut::row_major(oc, rows, n),
                    gptq_kernels::cpu::Mat::row_major(xc, rows, k),
                    gptq_kernels::cpu::Mat::row_major(&w, n, k).t(),
                    0.0,
                    1,
                );
            });
    }
    let s = t.elapsed().as_secs_f64() / it as f64;
    println!(
        "manual split {:.1} GFLOP/s",
        2.0 * (m * k * n) as f64 / s / 1e9
    );
}
