//! Black-box tests of the delivery stage: real HTTP and SMTP on 127.0.0.1, one fake per
//! external system, and a real Alertmanager when it is installed.

mod alertmanager;
mod channels;
mod docs;
mod reports;
mod secrets;
mod support;
mod telegram;
