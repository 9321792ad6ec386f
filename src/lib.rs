pub mod aof2;
