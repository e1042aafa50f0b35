// Top level for one Linear layer of a golden hex export: includes the layer's generated
// header (copied or linked as params.vh into an include directory) and instantiates
// nupes_linear with it. Used by the cocotb bench (tests/hdl) and by plain benches alike.
`timescale 1ns/1ps
module nupes_linear_top(clk, rst, x_we, x_addr, x_data, start, busy, out_valid, out_index, out_acc, out_code, done);
`include "params.vh"
    input wire clk, rst, x_we, start;
    input wire [15:0] x_addr;
    input wire [X_BITS-1:0] x_data;
    output wire busy, out_valid, done;
    output wire [15:0] out_index;
    output wire [ACC_W-1:0] out_acc;
    output wire [OUT_BITS-1:0] out_code;

    nupes_linear #(
        .K(K), .O(O), .X_BITS(X_BITS), .X_SIGNED(X_SIGNED), .X_LUT_QMIN(X_LUT_QMIN),
        .W_BITS(W_BITS), .W_SIGNED(W_SIGNED), .W_LUT_QMIN(W_LUT_QMIN), .PRODUCT(PRODUCT),
        .W_LUT_ROWS(W_LUT_ROWS), .W_LUT_COLS(W_LUT_COLS), .W_LUT_W(W_LUT_W),
        .X_LUT_COLS(X_LUT_COLS), .X_LUT_W(X_LUT_W),
        .P_LUT_ROWS(P_LUT_ROWS), .P_LUT_COLS(P_LUT_COLS), .P_LUT_W(P_LUT_W), .P_BY_PRODUCT(P_BY_PRODUCT), .P_MX(P_MX),
        .WIDX_W(WIDX_W), .ACC_W(ACC_W), .SATURATE(SATURATE), .TILE(TILE),
        .N_THR(N_THR), .THR_ROWS(THR_ROWS), .THR_W(THR_W), .OUT_QMIN(OUT_QMIN), .OUT_BITS(OUT_BITS),
        .W_CODES_FILE(W_CODES_FILE), .W_INDEX_FILE(W_INDEX_FILE), .W_LUT_FILE(W_LUT_FILE), .X_LUT_FILE(X_LUT_FILE),
        .P_LUT_FILE(P_LUT_FILE), .BIAS_FILE(BIAS_FILE), .THR_FILE(THR_FILE)
    ) layer (
        .clk(clk), .rst(rst), .x_we(x_we), .x_addr(x_addr), .x_data(x_data), .start(start), .busy(busy),
        .out_valid(out_valid), .out_index(out_index), .out_acc(out_acc), .out_code(out_code), .done(done)
    );
endmodule
